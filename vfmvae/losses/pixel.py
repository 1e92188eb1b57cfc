"""Pixel-space reconstruction losses: L1 / L2, SSIM and the multi-scale L1 (docs/design.md, "Tokenizer stages and losses").

All images are in [-1, 1] (project convention). The ground truth handed to these functions is
already transformed like the reconstruction (equivariance regularisation, docs/design.md, "Tokenizer stages and
losses").

Multi-scale L1 ("Progressive Resolution Reconstruction"): every intermediate RGB output of the
decoder (official order largest first: 128, 64, 32, 16, 8 px at 256 px) gets an L1 against the
ground truth resized to its size, each with weight 0.1, only while the *global* image counter is
below 5 M (`multiscale_pixel_loss_end_kimg 5000`). Outside that window the term is multiplied by
zero rather than dropped, as in the official code: the intermediate ToRGB layers then still take
part in the graph, which keeps DDP from failing on unused parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure


def _check_pair(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements of `(B, 3, H, W)` images in [-1, 1]."""
    _check_pair(pred, target, "l1_loss")
    return (pred.float() - target.float()).abs().mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (official `l2_pixel_loss`, weight 0 in every stage)."""
    _check_pair(pred, target, "l2_loss")
    return (pred.float() - target.float()).square().mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """`1 - SSIM` on images clamped to [-1, 1], data range 2, Gaussian window 11, sigma 1.5.

    Same numbers as torchmetrics' `StructuralSimilarityIndexMeasure(data_range=2.0)` used by the
    official stage-2 loss (batch mean of per-image SSIM). Needs H, W >= kernel_size.
    """
    _check_pair(pred, target, "ssim_loss")
    if min(pred.shape[-2:]) < kernel_size:
        raise ValueError(
            f"ssim_loss: images of size {tuple(pred.shape[-2:])} are smaller than the SSIM window {kernel_size}"
        )
    ssim = structural_similarity_index_measure(
        pred.float().clamp(-1, 1),
        target.float().clamp(-1, 1),
        gaussian_kernel=True,
        sigma=sigma,
        kernel_size=kernel_size,
        data_range=2.0,
        reduction="elementwise_mean",
    )
    return 1.0 - ssim


def resize_like_vfm(img: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize with the VFM's interpolation: `align_corners=False`, antialias only when shrinking.

    Bilinear/bicubic resizing is affine-equivariant (weights sum to one), so resizing [-1, 1]
    images equals resizing in [0, 1] and mapping afterwards, up to float rounding.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(img.shape[-2:]) == size:
        return img
    kwargs: dict = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
        kwargs["antialias"] = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    return F.interpolate(img, size=size, **kwargs)


@dataclass
class MultiScalePixelLossConfig:
    """Weights of the progressive-output L1 terms and the image window in which they count.

    `weights[i]` belongs to the i-th multi-scale output as the decoder returns them (largest
    first). `start_nimg <= global_nimg < end_nimg` switches the term on (global counter across
    all stages, project convention).
    """

    weights: list[float] = field(default_factory=lambda: [0.1] * 5)
    start_nimg: int = 0
    end_nimg: int = 5_000_000
    interpolation: str = "bilinear"


class MultiScalePixelLoss:
    """Callable: `(outputs, target, global_nimg) -> {"multiscale_l1", "multiscale_l1_<res>", ...}`.

    Args (call):
        outputs: list of `(B, 3, r_i, r_i)` intermediate reconstructions in [-1, 1].
        target: `(B, 3, H, W)` transformed ground truth in [-1, 1].
        global_nimg: images seen so far over all stages.

    `multiscale_l1` is the weighted sum (times 0 outside the window); the per-resolution entries
    are the unweighted L1 values, detached, for logging.
    """

    def __init__(self, config: MultiScalePixelLossConfig | None = None):
        self.config = config or MultiScalePixelLossConfig()
        if self.config.end_nimg < self.config.start_nimg:
            raise ValueError(
                f"multi-scale loss window is empty: end_nimg {self.config.end_nimg} < start_nimg {self.config.start_nimg}"
            )

    def is_active(self, global_nimg: int) -> bool:
        return self.config.start_nimg <= global_nimg < self.config.end_nimg

    def __call__(
        self, outputs: Sequence[torch.Tensor], target: torch.Tensor, global_nimg: int
    ) -> dict[str, torch.Tensor]:
        weights = self.config.weights
        if len(outputs) != len(weights):
            raise ValueError(
                f"multi-scale loss has {len(weights)} weights but the decoder returned {len(outputs)} outputs"
            )
        gate = 1.0 if self.is_active(global_nimg) else 0.0
        total = target.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        for weight, out in zip(weights, outputs):
            gt = resize_like_vfm(target, tuple(out.shape[-2:]), self.config.interpolation)
            value = l1_loss(out, gt)
            total = total + weight * value
            terms[f"multiscale_l1_{out.shape[-1]}"] = value.detach()
        terms["multiscale_l1"] = total * gate
        return terms
