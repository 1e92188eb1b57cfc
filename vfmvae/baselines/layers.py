"""Building blocks of the LDM / diffusers KL autoencoder: residual block, self-attention, resampling.

All blocks map ``(B, C, H, W)`` feature maps and use GroupNorm + SiLU, as the official code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int, eps: float) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps, affine=True)


class ResBlock(nn.Module):
    """``x -> shortcut(x) + conv2(dropout(silu(norm2(conv1(silu(norm1(x)))))))``: ``(B, Cin, H, W) -> (B, Cout, H, W)``.

    ``shortcut`` is a 1x1 conv when the width changes (LDM ``nin_shortcut``, diffusers ``conv_shortcut``),
    else the identity. No time embedding (the autoencoders have none).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the ``H*W`` positions, with a residual: ``(B, C, H, W) -> (B, C, H, W)``.

    q, k, v and the output projection are per-position linear maps (LDM stores them as 1x1 convs, diffusers
    as ``nn.Linear``; the converters reshape). Softmax scale ``C ** -0.5``.
    """

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.norm = group_norm(channels, groups, eps)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = F.scaled_dot_product_attention(self.q(tokens), self.k(tokens), self.v(tokens))
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Halve ``H`` and ``W``: zero-pad one row/column at the bottom/right, then a 3x3 stride-2 conv without padding
    (the official asymmetric padding; a symmetric ``padding=1`` would shift the sampling grid)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double ``H`` and ``W``: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """``block1 -> attn (optional) -> block2`` at the lowest resolution, width unchanged."""

    def __init__(self, channels: int, groups: int, eps: float, attention: bool, dropout: float = 0.0):
        super().__init__()
        self.block1 = ResBlock(channels, channels, groups, eps, dropout)
        self.attn = SpatialSelfAttention(channels, groups, eps) if attention else None
        self.block2 = ResBlock(channels, channels, groups, eps, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.block2(x)
