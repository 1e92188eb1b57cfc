"""Old location of the reconstruction metrics, now :mod:`vfmvae.metrics.reconstruction`.

Kept only until `lightning_modules/tokenizer.py` and `scripts/demo.py` import the new module; delete it then.
`to_uint8` here keeps its old behaviour (round to the nearest level) so that the tokenizer's validation numbers do
not change silently; the evaluation protocol truncates (`ReconstructionMetrics.update_decoded`).
"""

from __future__ import annotations

import torch

from vfmvae.codec import to_uint8 as _to_uint8
from vfmvae.codec import uint8_to_signed as uint8_to_pm1
from vfmvae.metrics.reconstruction import ReconstructionMetrics, psnr_per_image, ssim_per_image

__all__ = ["ReconstructionMetrics", "psnr_per_image", "ssim_per_image", "to_uint8", "uint8_to_pm1"]


def to_uint8(images_pm1: torch.Tensor) -> torch.Tensor:
    """Deprecated: ``vfmvae.codec.to_uint8(images_pm1, "round")``."""
    return _to_uint8(images_pm1, "round")
