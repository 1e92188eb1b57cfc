"""Small shared layers of the VFM-VAE decoder (StyleGAN-T lineage), docs/design.md, "Tokenizer architecture"."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit RMS along `dim` (StyleGAN's mapping-network input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class EqualizedLinear(nn.Module):
    """StyleGAN equalised-learning-rate linear layer: `y = act(x (W*g)^T + b*lr)`.

    The stored weight is `N(0, 1)/lr_multiplier` and the runtime gain `g = lr_multiplier/sqrt(in)`,
    so Adam's effective step on the weight is scaled by `lr_multiplier` (0.01 in the mapping MLP).
    `activation='lrelu'` is a plain leaky ReLU (slope 0.2) *without* the sqrt(2) gain, as in the
    VFM-VAE `FullyConnectedLayer`. Shapes: `(..., in) -> (..., out)`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        weight_init: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        if activation not in ("linear", "lrelu", "relu", "gelu"):
            raise ValueError(f"EqualizedLinear: unknown activation {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        x = F.linear(x, self.weight.to(x.dtype) * self.weight_gain, b)
        if self.activation == "lrelu":
            return F.leaky_relu(x, 0.2)
        if self.activation == "relu":
            return F.relu(x)
        if self.activation == "gelu":
            return F.gelu(x)
        return x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class StyleSplit(nn.Module):
    """Style vector from w: one equalised FC `w_dim -> 3C` (bias init 1), `s = m1*m2 + m3`. `(B, w) -> (B, C)`."""

    def __init__(self, w_dim: int, channels: int):
        super().__init__()
        self.fc = EqualizedLinear(w_dim, 3 * channels, bias_init=1.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m1, m2, m3 = self.fc(w).chunk(3, dim=1)
        return m1 * m2 + m3


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (half-precision statistics are unsafe).

    Calls the aten op directly: `F.group_norm` refuses groups holding a single value (batch 1 at a
    1x1 map, e.g. a 64-px image's first fusion adapter), where the result is simply the bias.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return torch.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class ChannelRMSNorm(nn.Module):
    """Channel-wise RMS norm of a feature map (GigaGAN): `normalize(x, dim=1) * sqrt(C) * gamma`. `(B, C, H, W)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma
