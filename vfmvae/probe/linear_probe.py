"""A linear classifier on the flattened tokenizer latent behind a parameter-free normalisation.

The paper reports a linear-probe accuracy per tokenizer (paper Table 1) without publishing its protocol; we
follow MAE's linear probe (docs/analyses.md, "Linear probe"): ``BatchNorm1d(affine=False, eps=1e-6)`` in front
of one ``Linear`` layer (weights truncated-normal with std 0.01, bias 0). The normalisation has no parameters,
so the probe measures what a *linear* map can read off the latent, whatever the scale of each feature.

Distributed training: the batch statistics are taken over the **global** batch (sums all-reduced over the
processes), so a probe trained on 1 or N processes at the same global batch sees the same normalisation and
the same gradients (up to the order of float additions). The latents are inputs without gradient, so the
statistics need no backward pass through the all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ParameterFreeBatchNorm", "LinearProbe"]


class ParameterFreeBatchNorm(nn.Module):
    """``BatchNorm1d(num_features, affine=False)`` with statistics over the global batch.

    Shapes: ``(B, D) -> (B, D)``. Training: normalise by the batch mean and biased variance of all processes'
    rows and update the running statistics (momentum ``momentum``, unbiased variance, as ``BatchNorm1d``).
    Evaluation: normalise by the running statistics. ``global_stats=False`` keeps per-process statistics
    (plain ``BatchNorm1d`` under DDP).
    """

    def __init__(self, num_features: int, eps: float = 1e-6, momentum: float = 0.1, global_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.global_stats = int(num_features), eps, momentum, global_stats
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _batch_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        # float64 sums: the result must not depend on how the rows are split over processes.
        stats = torch.cat(
            [x.double().sum(0), x.double().pow(2).sum(0), x.new_tensor([x.shape[0]], dtype=torch.float64)]
        )
        if self.global_stats and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        d = self.num_features
        n = int(stats[-1].item())
        mean = stats[:d] / n
        var = (stats[d : 2 * d] / n - mean.pow(2)).clamp_min(0.0)
        return mean, var, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"ParameterFreeBatchNorm expects (B, {self.num_features}), got {tuple(x.shape)}")
        if not self.training:
            return (x - self.running_mean) / torch.sqrt(self.running_var + self.eps)
        with torch.no_grad():
            mean, var, n = self._batch_moments(x.detach())
            unbiased = var * n / max(n - 1, 1)
            self.running_mean.mul_(1 - self.momentum).add_(mean.to(self.running_mean.dtype), alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(unbiased.to(self.running_var.dtype), alpha=self.momentum)
            self.num_batches_tracked.add_(1)
        return (x - mean.to(x.dtype)) / torch.sqrt(var.to(x.dtype) + self.eps)


class LinearProbe(nn.Module):
    """``(B, C, h, w)`` latents (or ``(B, D)`` features) -> ``(B, num_classes)`` logits.

    Args:
        in_features: ``C * h * w``.
        num_classes: classes of the labelled split.
        normalization: ``"batchnorm"`` (parameter-free, MAE) or ``"none"`` (the raw latent; for the
            sensitivity study only).
    """

    def __init__(self, in_features: int, num_classes: int, normalization: str = "batchnorm", init_std: float = 0.01):
        super().__init__()
        if normalization not in ("batchnorm", "none"):
            raise ValueError(f"unknown probe normalization {normalization!r}; choose 'batchnorm' or 'none'")
        self.norm = ParameterFreeBatchNorm(in_features) if normalization == "batchnorm" else nn.Identity()
        self.head = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=init_std)  # MAE's linear-probe head init
        nn.init.zeros_(self.head.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(latents.flatten(1).float()))
