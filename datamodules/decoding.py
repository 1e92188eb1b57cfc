"""Robust image decoding and the bad-image budget shared by every image source.

A corrupt or truncated file must not stop a multi-day run, but silently training on a dataset that
is half broken must not happen either. So: every image that fails to decode is skipped, counted and
logged with its key, and :class:`BadImageTracker` raises :class:`TooManyBadImagesError` once the
fraction of bad images exceeds ``max_bad_fraction`` (judged only after ``min_seen`` images, so that one
early bad file in a small sample is not mistaken for a broken dataset).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field

from PIL import Image

log = logging.getLogger(__name__)


class TooManyBadImagesError(RuntimeError):
    """More than the allowed fraction of images could not be decoded."""


def decode_rgb(source: bytes | str | os.PathLike) -> Image.Image:
    """Decode an encoded image (bytes) or an image file (path) into a fully loaded RGB ``PIL.Image``.

    ``Image.load()`` forces the whole file to be read here, so a truncated JPEG fails now (and is
    skipped by the caller) instead of later inside a crop. PIL's "truncated file" warnings are
    turned into errors for the same reason. Grey, palette, CMYK and RGBA images become RGB
    (alpha is dropped, as ``convert('RGB')`` does in the official pipeline).
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp) as img:
            img.load()
            rgb = img.convert("RGB")
    if rgb.width < 1 or rgb.height < 1:
        raise ValueError(f"empty image ({rgb.width}x{rgb.height})")
    return rgb


def image_size(source: bytes | str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the image header only (fast; used by the filter-list script)."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with Image.open(fp) as img:
        return img.size


@dataclass
class BadImageTracker:
    """Counts decoded and failed images and enforces the bad-image budget.

    One tracker lives in each process that decodes (each dataloader worker has its own copy); the
    DataModule keeps a main-process tracker fed from the ``skipped`` keys that batches carry, so the
    budget is also checked over the whole rank.

    Args:
        max_bad_fraction: fail when ``num_bad / num_seen`` exceeds this (``num_seen`` counts bad ones too).
        min_seen: do not judge the fraction before this many images were seen.
        max_logged_keys: keep at most this many bad keys in memory for the final report.
    """

    max_bad_fraction: float = 0.01
    min_seen: int = 100
    max_logged_keys: int = 1000
    num_seen: int = 0
    num_bad: int = 0
    bad_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.min_seen < 1:
            raise ValueError(f"min_seen must be >= 1, got {self.min_seen}")

    def ok(self, count: int = 1) -> None:
        self.num_seen += count
        self._check()

    def bad(self, key: str, reason: str | BaseException, *, log_it: bool = True) -> None:
        """Count one skipped image and log it with its key."""
        self.num_seen += 1
        self.num_bad += 1
        if len(self.bad_keys) < self.max_logged_keys:
            self.bad_keys.append(key)
        if log_it:
            log.warning(
                "skipping unreadable image %r (%s); %d bad of %d seen", key, reason, self.num_bad, self.num_seen
            )
        self._check()

    @property
    def bad_fraction(self) -> float:
        return self.num_bad / max(self.num_seen, 1)

    def _check(self) -> None:
        if self.num_seen >= self.min_seen and self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadImagesError(
                f"{self.num_bad} of {self.num_seen} images ({100 * self.bad_fraction:.2f}%) could not be decoded, "
                f"more than max_bad_fraction={self.max_bad_fraction}; first bad keys: {self.bad_keys[:10]}. "
                "Check the dataset (or raise max_bad_fraction if this is expected)."
            )

    def summary(self) -> str:
        return f"{self.num_bad} bad of {self.num_seen} images seen ({100 * self.bad_fraction:.3f}%)"
