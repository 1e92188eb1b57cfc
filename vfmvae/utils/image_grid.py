"""One image-grid helper for sample grids, reconstruction grids and the demo's pictures."""

from __future__ import annotations

import math

import torch
from torchvision.utils import make_grid


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> one uint8 mosaic ``(3, rows*(H+pad)+pad, cols*(W+pad)+pad)``.

    ``nrow`` is the number of images per row (default: the ceiling of the square root of B), as in
    torchvision's `make_grid`, which does the tiling.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"image_grid takes uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    if images.shape[0] == 1:  # torchvision returns a lone image without its border
        return torch.nn.functional.pad(images[0], (pad, pad, pad, pad), value=pad_value)
    cols = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    return make_grid(images, nrow=cols, padding=pad, pad_value=pad_value)


__all__ = ["image_grid"]
