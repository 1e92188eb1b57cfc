"""SE-CKNNA "semantic-equivariant" conditions (docs/design.md, "SE-CKNNA"; official `tools/evaluate_alignment/preprocess.py`).

Deterministic per image, indexed by its position `idx` in stem-sorted order:
- equivariance: NumPy legacy RNG seeded with `seed + idx` (seed 42), then `rotation = choice([0, 90, 180, 270])`
  and *after it* `scale = choice([1.0, 0.75, 0.5, 0.25])`;
- pixel noise sigma in {0.05, 0.10, 0.15, 0.20}: RNG seeded with the same `seed + idx` for every sigma, noise =
  normal(0, sigma, HWC) in float32, image + 255 * noise, clip to [0, 255], truncate to uint8; images that are not
  256 x 256 are first resized with Lanczos;
- clean: the image unchanged.

`np.random.RandomState(s)` reproduces `np.random.seed(s)` + the global draws without touching global state.
Rotation is counter-clockwise in quarter turns (`np.rot90(img, k, axes=(0, 1))` == `torch.rot90(x, k, (-2, -1))`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "SE_SEED",
    "ROTATIONS",
    "SCALES",
    "NOISE_LEVELS",
    "EquivarianceTransform",
    "equivariance_params",
    "equivariance_records",
    "add_pixel_noise",
    "condition_names",
    "noise_condition",
    "rotate_quarter_turns",
    "load_image",
    "list_images",
]

SE_SEED = 42
ROTATIONS = (0, 90, 180, 270)
SCALES = (1.0, 0.75, 0.5, 0.25)
NOISE_LEVELS = (0.05, 0.10, 0.15, 0.20)
SE_RESOLUTION = 256


@dataclass(frozen=True)
class EquivarianceTransform:
    """Rotation in degrees (multiple of 90, counter-clockwise) and a down-scale factor in (0, 1]."""

    rotation: int
    scale: float

    def __post_init__(self) -> None:
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {self.rotation}")
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")

    def as_record(self) -> dict:
        return {"rotation": int(self.rotation), "scale": float(self.scale)}


def equivariance_params(index: int, seed: int = SE_SEED) -> EquivarianceTransform:
    """The official per-image draw: seed `seed + index`, rotation first, then scale."""
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    rng = np.random.RandomState(seed + index)
    rotation = rng.choice(list(ROTATIONS))
    scale = rng.choice(list(SCALES))
    return EquivarianceTransform(int(rotation), float(scale))


def equivariance_records(names: list[str], seed: int = SE_SEED) -> dict[str, dict]:
    """`{stem: {"rotation", "scale"}}` as the official `equivariance_transforms.json`; `names` are sorted first."""
    return {name: equivariance_params(i, seed).as_record() for i, name in enumerate(sorted(names))}


def add_pixel_noise(image: np.ndarray, sigma: float, index: int, seed: int = SE_SEED) -> np.ndarray:
    """Official pixel noise on a uint8 `(H, W, 3)` image; the noise pattern depends only on (seed + index)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise TypeError(
            f"image must be a uint8 (H, W, C) array, got {getattr(image, 'dtype', type(image))} "
            f"{getattr(image, 'shape', '')}"
        )
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    noise = np.random.RandomState(seed + index).normal(0, sigma, image.shape).astype(np.float32)
    return np.clip(image + noise * 255.0, 0, 255).astype(np.uint8)


def noise_condition(sigma: float) -> str:
    return f"noise_{sigma:.3f}"


def condition_names(noise_levels=NOISE_LEVELS, equivariance: bool = True) -> list[str]:
    """`["clean", "equivariance", "noise_0.050", ...]` (the official folder / file suffixes)."""
    return ["clean"] + (["equivariance"] if equivariance else []) + [noise_condition(s) for s in noise_levels]


def rotate_quarter_turns(images: torch.Tensor, rotation: int) -> torch.Tensor:
    """Rotate `(..., H, W)` by `rotation` degrees counter-clockwise (multiple of 90)."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    k = (rotation // 90) % 4
    return torch.rot90(images, k=k, dims=(-2, -1)) if k else images


def list_images(folder: str | Path) -> list[Path]:
    """PNG files of `folder` sorted by stem (the official order that defines each image's index)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(folder.glob("*.png"), key=lambda p: p.stem)
    if not paths:
        raise FileNotFoundError(f"no .png images in {folder}")
    return paths


def load_image(path: str | Path, resolution: int = SE_RESOLUTION) -> np.ndarray:
    """uint8 `(resolution, resolution, 3)`; other sizes are resized with Lanczos as the official scripts do."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.array(img, dtype=np.uint8)  # writable copy (torch.from_numpy warns on read-only arrays)
