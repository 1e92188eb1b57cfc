"""Plain modulated convolution layer of the ablation's baseline decoder (docs/analyses.md, "Component ablation").

The paper's component ablation starts from a baseline decoder without the modulated ConvNeXt / attention
blocks; its synthesis layers are StyleGAN2 modulated 3x3 convolutions, as the official generator builds
them when `use_convnext: false` (`VFMVAEConfig.use_convnext = False` here). The learned x2 upsampler, the
feature-space skip path and the ToRGB heads stay those of the full decoder, so that the ablation row
changes only the layer type.

`ModulatedConvLayer(C, w_dim, residual)`: `(B, C, H, W), w (B, w_dim) -> (B, C, H, W)`.

    plain:     y = lrelu(modconv3x3(x, s(w)) / ||W s||  + b) * sqrt(2) * gain
    residual:  x' = GroupNorm(x);  y = (gamma * lrelu(modconv3x3(x', s(w)) / ||W s|| + b) * sqrt(2) * gain + x') * sqrt(2)

with per-sample demodulation (StyleGAN2) and `gamma` a learned layer scale (init 1e-5), the official
residual variant. `gain` is 1 for the first layer of a block and sqrt(1/2) for the others (official
`SynthesisBlock.forward`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32, StyleSplit


def modulated_conv(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Per-sample kxk conv with weight `W[o, i] * style[b, i]`, demodulated over (i, kh, kw).

    `(W * s) * x == W * (s x)`, so the style scales the input and the demodulation the output (one
    shared-weight conv). x `(B, I, H, W)`, weight `(O, I, k, k)`, style `(B, I)` -> `(B, O, H, W)`.
    """
    B = x.shape[0]
    pad = weight.shape[-1] // 2
    y = F.conv2d(x * style.to(x.dtype).view(B, -1, 1, 1), weight.to(x.dtype), padding=pad)
    w2 = weight.float().square().sum(dim=(2, 3))  # (O, I)
    dcoefs = (style.float().square() @ w2.t() + 1e-8).rsqrt()  # (B, O)
    return y * dcoefs.to(y.dtype).view(B, -1, 1, 1)


class ModulatedConvLayer(nn.Module):
    """StyleGAN2 modulated 3x3 conv + bias + leaky ReLU (x sqrt 2); optionally residual (see module docstring)."""

    def __init__(
        self,
        channels: int,
        w_dim: int,
        kernel_size: int = 3,
        residual: bool = False,
        gain: float = 1.0,
        layer_scale_init: float = 1e-5,
    ):
        super().__init__()
        self.style = StyleSplit(w_dim, channels)
        self.weight = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.residual, self.gain = residual, gain
        if residual:
            self.norm = GroupNorm32(min(32, channels), channels)
            self.layer_scale = nn.Parameter(torch.full((1, channels, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.residual:
            x = self.norm(x)
        y = modulated_conv(x, self.weight, self.style(w))
        y = F.leaky_relu(y + self.bias.to(y.dtype).view(1, -1, 1, 1), 0.2) * (math.sqrt(2) * self.gain)
        if self.residual:
            return (self.layer_scale * y + x) * math.sqrt(2)
        return y


def plain_layers(channels: int, w_dim: int, count: int) -> nn.ModuleList:
    """The `count` layers of one baseline block, in the official order: a plain first layer (gain 1), then
    pairs (plain, residual) with gain sqrt(1/2)."""
    return nn.ModuleList(
        ModulatedConvLayer(channels, w_dim, residual=j > 0 and j % 2 == 0, gain=1.0 if j == 0 else math.sqrt(0.5))
        for j in range(count)
    )


__all__ = ["ModulatedConvLayer", "modulated_conv", "plain_layers"]
