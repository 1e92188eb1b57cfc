"""Local ("virtual batch") batch norm used by both discriminators (docs/design.md, "Tokenizer stages and losses").

The batch is cut into `G = ceil(B / virtual_batch)` consecutive groups of equal size; each group
is normalised with its own statistics (biased variance, eps 1e-5), then a per-channel affine.
No running statistics: train and eval behave the same, and the result does not depend on how
many GPUs share the global batch (StyleGAN-T's reason for it).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _groups(batch: int, virtual_batch: int) -> int:
    groups = math.ceil(batch / virtual_batch)
    if batch % groups != 0:
        raise ValueError(
            f"BatchNormLocal: batch {batch} cannot be split into {groups} equal groups (virtual batch {virtual_batch}); "
            f"use a per-device batch that is a multiple of {groups} or at most {virtual_batch}"
        )
    return groups


class _LocalNorm(nn.Module):
    """Settings and per-channel affine shared by the token-map and image-map variants below."""

    def __init__(self, num_features: int, virtual_batch: int = 8, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.virtual_batch = virtual_batch
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))


class BatchNormLocal(_LocalNorm):
    """Group-wise batch norm over `(B, C, L)` token maps (projected-discriminator heads).

    Statistics per group and channel over (samples in the group, L).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        g = _groups(b, self.virtual_batch)
        xg = x.reshape(g, b // g, c, length)
        # Statistics in float32: a mean over up to 8 x 196 tokens.
        xf = xg.float()
        mean = xf.mean(dim=(1, 3), keepdim=True)
        var = xf.var(dim=(1, 3), keepdim=True, unbiased=False)
        y = ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype).reshape(b, c, length)
        if self.affine:
            y = y * self.weight.view(1, c, 1) + self.bias.view(1, c, 1)
        return y


class BatchNormLocal2d(_LocalNorm):
    """Group-wise batch norm over `(B, C, H, W)` maps (PatchGAN). Statistics over (group, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = _groups(b, self.virtual_batch)
        xf = x.reshape(g, b // g, c, h, w).float()
        mean = xf.mean(dim=(1, 3, 4), keepdim=True)
        var = xf.var(dim=(1, 3, 4), keepdim=True, unbiased=False)
        y = ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype).reshape(b, c, h, w)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y
