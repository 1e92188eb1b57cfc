"""The one place that converts between pixels, raw latents and normalised latents.

Conventions (docs/design.md, "Value ranges and pixel conversion"): data loaders yield `uint8` images
`(B, 3, H, W)`; the tokenizer encodes float images in [0, 1] and its decoder returns images in [-1, 1];
diffusion models see *normalised* latents `x = (z - mu_c) / sigma_c * multiplier`
(docs/design.md, "Latent normalisation"), where `mu_c`, `sigma_c` are per-channel statistics of posterior
samples over the training set.

`LatentNormalizer` holds those statistics; `LatentCodec` chains tokenizer and normaliser so that callers
(latent caching, sampling, the diffusion module's image grids) never re-implement the arithmetic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "LatentNormalizer",
    "LatentCodec",
    "UINT8_MODES",
    "to_uint8",
    "uint8_to_unit",
    "uint8_to_signed",
    "signed_to_unit",
    "unit_to_signed",
    "as_unit",
    "signed_to_uint8",
    "channel_stats",
]

# How a float image becomes 8-bit pixels (docs/design.md, "Value ranges and pixel conversion"):
# - "truncate": clamp to [0, 1], x 255, truncate. The official VFM-VAE tools (`tools/decode`,
#   `tools/reconstruct`) write images with torchvision's `to_pil_image`, i.e. `x.mul(255).byte()`.
#   This is the paper protocol.
# - "round": clamp, x 255, round half to even. Half a grey level brighter on average than "truncate".
# - "half_up": `clamp(127.5 x + 128, 0, 255)` truncated = round half up; LightningDiT's VA-VAE
#   `decode_to_images` (and ADM's sample scripts) convert this way.
UINT8_MODES = ("truncate", "round", "half_up")


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """`uint8 (B, 3, H, W)` -> float32 in [0, 1] (the tokenizer's input range)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.float() / 255.0


def uint8_to_signed(images: torch.Tensor) -> torch.Tensor:
    """`uint8 (B, 3, H, W)` -> float32 in [-1, 1] (LPIPS, SSIM and VA-VAE/SD-VAE inputs)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.float() / 127.5 - 1.0


def as_unit(images: torch.Tensor, who: str = "images") -> torch.Tensor:
    """`(B, 3, H, W)` uint8 -> float32 in [0, 1]; float images are taken as already in [0, 1] and returned as is.

    The tokenizer-facing entry points accept both (loaders yield uint8, tests and tools pass floats); ``who`` names
    the caller in the error for any other dtype.
    """
    if images.dtype == torch.uint8:
        return uint8_to_unit(images)
    if not images.is_floating_point():
        raise TypeError(f"{who} must be float in [0, 1] or uint8, got {images.dtype}")
    return images


def signed_to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (decoder output) -> [0, 1], `(x + 1) / 2`, not clamped."""
    return (images + 1.0) / 2.0


def unit_to_signed(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1], `2x - 1`."""
    return images * 2.0 - 1.0


def to_uint8(images: torch.Tensor, mode: str, *, value_range: str = "signed") -> torch.Tensor:
    """Float images -> `uint8` of the same shape, the one float-to-pixel conversion of the project.

    Args:
        images: float tensor, nominally in [-1, 1] (``value_range="signed"``, decoder outputs) or
            [0, 1] (``"unit"``); values outside are clamped.
        mode: one of :data:`UINT8_MODES` (see their comment); callers name the official tool they follow.
    """
    if mode not in UINT8_MODES:
        raise ValueError(f"unknown uint8 conversion mode {mode!r}; choose one of {UINT8_MODES}")
    if value_range not in ("signed", "unit"):
        raise ValueError(f"value_range must be 'signed' ([-1, 1]) or 'unit' ([0, 1]), got {value_range!r}")
    x = images.detach().float()
    if mode == "half_up":
        scaled = x * 127.5 + 128.0 if value_range == "signed" else x * 255.0 + 0.5
        return scaled.clamp(0, 255).to(torch.uint8)
    if mode == "round":
        scaled = (x + 1.0) * 127.5 if value_range == "signed" else x * 255.0
        return scaled.round().clamp(0, 255).to(torch.uint8)
    unit = (signed_to_unit(x) if value_range == "signed" else x).clamp(0, 1)
    return unit.mul(255).to(torch.uint8)  # float -> uint8 truncates toward zero, as `Tensor.byte()`


def signed_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Deprecated spelling of ``to_uint8(images, "round")``; kept until every caller names its mode."""
    return to_uint8(images, "round")


def channel_stats(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and *unbiased* std of latents `(N, C, h, w)`, pooled over N, h, w.

    This is the official `latents_stats.pt` protocol (docs/design.md, "Latent normalisation"): returns two
    `(1, C, 1, 1)` float32 tensors. Computed in float64 so that 10,000 x 16 x 16 samples do not lose precision.
    """
    if samples.ndim != 4:
        raise ValueError(f"expected latents (N, C, h, w), got shape {tuple(samples.shape)}")
    flat = samples.double().transpose(0, 1).reshape(samples.shape[1], -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=True)
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


class LatentNormalizer(nn.Module):
    """Per-channel affine normalisation of tokenizer latents (docs/design.md, "Latent normalisation").

    `normalize(z) = (z - mean) / std * multiplier`, `denormalize(x) = x / multiplier * std + mean`;
    `mean`, `std` are `(1, C, 1, 1)` buffers, so they travel with checkpoints and devices.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, multiplier: float = 1.0):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same channels")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("latent statistics must be finite (NaN or inf in mean or std)")
        if not torch.all(std > 0):
            raise ValueError("latent std must be positive in every channel")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.multiplier = float(multiplier)

    @property
    def num_channels(self) -> int:
        return self.mean.shape[1]

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.num_channels:
            raise ValueError(
                f"latent shape {tuple(z.shape)} does not match the statistics ({self.num_channels} channels)"
            )

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent `(B, C, h, w)` -> normalised latent (what the DiT sees)."""
        self._check(z)
        return (z - self.mean.to(z)) / self.std.to(z) * self.multiplier

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent `(B, C, h, w)` -> raw latent (what the decoder takes)."""
        self._check(x)
        return x / self.multiplier * self.std.to(x) + self.mean.to(x)

    @classmethod
    def from_samples(cls, samples: torch.Tensor, multiplier: float = 1.0) -> LatentNormalizer:
        """Statistics from posterior samples `(N, C, h, w)` (see `channel_stats`)."""
        mean, std = channel_stats(samples)
        return cls(mean, std, multiplier)

    def stats_dict(self) -> dict[str, torch.Tensor]:
        """`{"mean", "std"}` of shape `(1, C, 1, 1)`: the official `latents_stats.pt` layout."""
        return {"mean": self.mean.detach().cpu().clone(), "std": self.std.detach().cpu().clone()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the official `latents_stats.pt` format (atomically)."""
        from vfmvae.utils.checkpoint_io import atomic_save

        atomic_save(self.stats_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, multiplier: float = 1.0) -> LatentNormalizer:
        """Read a `latents_stats.pt` (ours or the official release: a dict with `mean` and `std`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"latent statistics file not found: {path} (run `make cache-latents`, which writes it beside the "
                "shards, or give the official latents_stats.pt)"
            )
        from vfmvae.utils.safe_load import load_user_file

        stats = load_user_file(path, what="latent statistics file")
        if not isinstance(stats, Mapping):
            raise KeyError(f"{path}: latent statistics need a dict with 'mean' and 'std', got {type(stats).__name__}")
        return cls.from_stats(stats, multiplier, source=str(path))

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any], multiplier: float = 1.0, source: str = "stats") -> LatentNormalizer:
        missing = {"mean", "std"} - set(stats)
        if missing:
            raise KeyError(f"{source}: latent statistics need keys 'mean' and 'std', missing {sorted(missing)}")
        try:
            return cls(stats["mean"], stats["std"], multiplier)
        except ValueError as err:  # name the file (or record) the numbers came from
            raise ValueError(f"{source}: {err}") from err


class LatentCodec(nn.Module):
    """Pixels <-> normalised latents through a tokenizer and a `LatentNormalizer`.

    `tokenizer` must provide `encode(images_01) -> posterior` (with `.mean`, `.logvar`, `.sample(eps)`) and
    `decode(z) -> images in [-1, 1]`; a decoder-only tokenizer is enough for `decode_*`.
    """

    def __init__(self, tokenizer: nn.Module, normalizer: LatentNormalizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.normalizer = normalizer

    @torch.no_grad()
    def encode_uint8(self, images: torch.Tensor):
        """`uint8 (B, 3, H, W)` -> the tokenizer's posterior over raw latents."""
        return self.tokenizer.encode(uint8_to_unit(images))

    @torch.no_grad()
    def decode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latents `(B, C, h, w)` -> decoder images in [-1, 1]."""
        return self.tokenizer.decode(self.normalizer.denormalize(x))

    @torch.no_grad()
    def decode_to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> `uint8 (B, 3, H, W)` images ready for PNG or the ADM evaluator."""
        return signed_to_uint8(self.decode_normalized(x))
