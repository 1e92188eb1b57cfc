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

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class TooManyBadImagesError(RuntimeError):
    """More than the allowed fraction of images could not be decoded."""


def decode_rgb(source: bytes | str | os.PathLike) -> Image.Image:
    """Decode an encoded image (bytes) or an image file (path) into a fully loaded RGB ``PIL.Image``.

    ``Image.load()`` forces the whole file to be read here, so a truncated JPEG fails now (and is
    skipped by the caller) instead of later inside a crop. PIL's "truncated file" warnings are
    turned into errors for the same reason. Grey, palette, CMYK and RGBA images become RGB
    (alpha is dropped, as ``convert('RGB')`` does in the official pipeline). Images of more than 8 bits
    per sample (PIL modes ``I;16*``, ``I``, ``F``) are scaled to 8 bits first (:func:`to_8bit`).
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp) as img:
            img.load()
            rgb = to_8bit(img).convert("RGB")
    if rgb.width < 1 or rgb.height < 1:
        raise ValueError(f"empty image ({rgb.width}x{rgb.height})")
    return rgb


def _declared_integer_range(img: Image.Image) -> int | None:
    """The largest value a mode-``I`` image's samples can hold, from the TIFF tags that declare it, or None."""
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # BitsPerSample
    if not bits:
        return None
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    sample_format = tags.get(339, 1)  # SampleFormat: 1 unsigned, 2 signed
    signed = int(sample_format[0] if isinstance(sample_format, tuple) else sample_format) == 2
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def to_8bit(img: Image.Image) -> Image.Image:
    """An image whose samples have more than 8 bits (or are floats) as a mode-``L`` image; others unchanged.

    PIL's ``convert("RGB")`` clips such samples to 255 (a 16-bit PNG turns all white), so they are scaled
    here by the range the format declares: ``I;16*`` by 65535; ``I`` by the TIFF bit depth when the file
    declares one, else by 65535 (a 16-bit file PIL widened) when every value fits; ``F`` from [0, 1]. A range
    that cannot be known is an error (the caller counts and names the image) instead of a guess.
    """
    if img.mode.startswith("I;16"):
        top = 65535
    elif img.mode == "I":
        top = _declared_integer_range(img) or 65535
    elif img.mode == "F":
        top = None
    else:
        return img
    values = np.asarray(img)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if top is None:
        if lo < 0.0 or hi > 1.0 or not np.isfinite(values).all():
            raise ValueError(
                f"floating-point image with values in [{lo}, {hi}]: only [0, 1] has a known scale; "
                "convert it to 8- or 16-bit"
            )
        scaled = np.floor(values.astype(np.float64) * 255.0 + 0.5)
    else:
        if lo < 0 or hi > top:
            raise ValueError(
                f"{img.mode}-mode image with values in [{lo:.0f}, {hi:.0f}], outside its range [0, {top}]; "
                "convert it to 8- or 16-bit"
            )
        scaled = (values.astype(np.float64) * (255.0 / top) + 0.5).astype(np.int64)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # 2-D uint8: mode L


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
