"""Reconstruction metrics of the paper's protocol: PSNR, SSIM, LPIPS, rFID, rIS.

Follows the official `tools/reconstruct` of VFM-VAE (docs/design.md, "Evaluation protocol"):
`reconstruct.py` crops inputs with `Resize(256) + CenterCrop(256)`, decodes with `G_ema` and writes inputs and
reconstructions as PNG through torchvision's `to_pil_image`, i.e. a decoded image `x` in [-1, 1] becomes
`uint8(clamp((x + 1) / 2, 0, 1) * 255)` with **truncation** (`Tensor.byte()`); `evaluate.py` reads the PNG pairs
back. :meth:`ReconstructionMetrics.update_decoded` applies that conversion (`vfmvae.codec.to_uint8(x, "truncate")`,
the default ``uint8_mode``; ``"round"`` is the option to round to the nearest level instead). Then

- PSNR per image with data range 2 on [-1, 1] (= 255 on uint8), averaged over images;
- SSIM: torchmetrics, Gaussian window 11 / sigma 1.5, data range 2 on [-1, 1], averaged over images;
- LPIPS: the training LPIPS-VGG on [-1, 1], averaged over images;
- rFID / rIS: torch-fidelity `inception-v3-compat` between the reconstructions and the cropped inputs (not ADM
  reference statistics). FID uses the 2048-d pool features (the robust float64 Fréchet distance of
  `vfmvae.metrics.frechet`), IS torch-fidelity's `isc_features_to_metric` (10 splits, shuffled with seed 2020)
  on the unbiased logits.

`ReconstructionMetrics` accumulates over batches (validation loop, evaluation script); `compute()` returns a flat
dict. Everything here is a pure function of images and frozen feature networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from vfmvae.codec import UINT8_MODES, to_uint8, uint8_to_signed

__all__ = ["RECONSTRUCTION_UINT8_MODE", "ReconstructionMetrics", "psnr_per_image", "ssim_per_image"]

# The official tools/reconstruct writes PNGs with to_pil_image (truncation); see the module docstring.
RECONSTRUCTION_UINT8_MODE = "truncate"


def psnr_per_image(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """`(B,)` PSNR in dB of uint8 `(B, 3, H, W)` images (data range 255 == range 2 on [-1, 1])."""
    _check(real, fake)
    mse = (real.double() - fake.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-12))


def ssim_per_image(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """`(B,)` SSIM of uint8 images mapped to [-1, 1] (data range 2, Gaussian 11 / 1.5)."""
    _check(real, fake)
    return structural_similarity_index_measure(
        uint8_to_signed(fake),
        uint8_to_signed(real),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=2.0,
        reduction="none",
    )


def _check(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape != fake.shape or real.dim() != 4 or real.shape[1] != 3:
        raise ValueError(
            f"reconstruction metrics need two (B, 3, H, W) batches of equal shape, got "
            f"{tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if real.dtype != torch.uint8 or fake.dtype != torch.uint8:
        raise TypeError(f"reconstruction metrics take uint8 images (as saved to PNG), got {real.dtype} / {fake.dtype}")


class ReconstructionMetrics:
    """Accumulator: `update(real_uint8, fake_uint8)` per batch, `compute()` at the end.

    Args:
        lpips: LPIPS module (`vfmvae.losses.LPIPS`) or None to skip LPIPS.
        inception: callable uint8 `(B, 3, H, W)` -> `{"pool": (B, 2048), "logits": (B, 1008)}`
            (`vfmvae.metrics.inception.AdmInceptionFeatures`) or None to skip rFID / rIS.
        uint8_mode: how :meth:`update_decoded` turns decoder outputs into pixels; ``"truncate"`` (default) is the
            official `tools/reconstruct` (`to_pil_image`), ``"round"`` rounds to the nearest level.
    """

    def __init__(
        self,
        lpips: torch.nn.Module | None = None,
        inception: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
        uint8_mode: str = RECONSTRUCTION_UINT8_MODE,
    ):
        if uint8_mode not in UINT8_MODES:
            raise ValueError(f"unknown uint8_mode {uint8_mode!r}; choose one of {UINT8_MODES}")
        self.lpips = lpips
        self.inception = inception
        self.uint8_mode = uint8_mode
        self.reset()

    def reset(self) -> None:
        self.psnr: list[torch.Tensor] = []
        self.ssim: list[torch.Tensor] = []
        self.lpips_values: list[torch.Tensor] = []
        self.real_pool: list[np.ndarray] = []
        self.fake_pool: list[np.ndarray] = []
        self.fake_logits: list[np.ndarray] = []

    @property
    def num_images(self) -> int:
        return int(sum(len(p) for p in self.psnr))

    def to_uint8(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder output in [-1, 1] `(B, 3, H, W)` -> the uint8 pixels the metrics see (and the PNGs hold)."""
        return to_uint8(decoded, self.uint8_mode)

    @torch.no_grad()
    def update_decoded(self, real: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """:meth:`update` with a float decoder output in [-1, 1]; returns its uint8 pixels."""
        fake = self.to_uint8(decoded)
        self.update(real, fake)
        return fake

    @torch.no_grad()
    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """Accumulate a batch of uint8 `(B, 3, H, W)` inputs and reconstructions."""
        self.psnr.append(psnr_per_image(real, fake).cpu())
        self.ssim.append(ssim_per_image(real, fake).float().cpu())
        if self.lpips is not None:
            self.lpips_values.append(self.lpips(uint8_to_signed(fake), uint8_to_signed(real)).float().cpu())
        if self.inception is not None:
            f_real, f_fake = self.inception(real), self.inception(fake)
            self.real_pool.append(f_real["pool"].double().cpu().numpy())
            self.fake_pool.append(f_fake["pool"].double().cpu().numpy())
            self.fake_logits.append(f_fake["logits"].double().cpu().numpy())

    def compute(self) -> dict[str, float]:
        if not self.psnr:
            raise RuntimeError("ReconstructionMetrics.compute() before any update()")
        out = {
            "num_images": self.num_images,
            "psnr": float(torch.cat(self.psnr).mean()),
            "ssim": float(torch.cat(self.ssim).mean()),
        }
        if self.lpips_values:
            out["lpips"] = float(torch.cat(self.lpips_values).mean())
        if self.real_pool:
            out.update(self._fidelity())
        return out

    def _fidelity(self) -> dict[str, float]:
        from torch_fidelity.metric_isc import isc_features_to_metric

        from vfmvae.metrics.frechet import compute_statistics, frechet_distance

        real, fake = np.concatenate(self.real_pool), np.concatenate(self.fake_pool)
        out: dict[str, float] = {"rfid": math.nan, "ris": math.nan, "ris_std": math.nan}
        if len(real) >= 2:
            s_real, s_fake = compute_statistics(real), compute_statistics(fake)
            out["rfid"] = float(frechet_distance(s_fake.mu, s_fake.sigma, s_real.mu, s_real.sigma))
        logits = torch.from_numpy(np.concatenate(self.fake_logits))
        if len(logits) >= 10:  # torch-fidelity's 10 splits
            isc = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
            out["ris"], out["ris_std"] = float(isc["inception_score_mean"]), float(isc["inception_score_std"])
        return out
