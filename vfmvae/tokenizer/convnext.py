"""Convolutional building blocks of the synthesis network (docs/design.md, "Tokenizer architecture").

- `ModulatedConvNeXtLayer`: residual ConvNeXt layer whose first pointwise conv is modulated by
  the style of w and demodulated (StyleGAN2), optional legacy static noise.
- `ModulatedToRGB`: modulated 1x1 conv to RGB without demodulation.
- `SeparableBlurUpsample`: learned x2 upsampler (depthwise 3x3 + pointwise + PixelShuffle)
  followed by a fixed binomial blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32, StyleSplit

BINOMIAL_KERNELS = {3: (1.0, 2.0, 1.0), 5: (1.0, 4.0, 6.0, 4.0, 1.0)}


def modulated_pointwise(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """Per-sample 1x1 conv with weight `W[o, i] * style[b, i]` (optionally divided by its L2 norm over i).

    `(W * s) x == W (s * x)`, so the style scales the input and the demodulation scales the output:
    one shared-weight conv instead of a grouped conv with B weight copies.
    x `(B, I, H, W)`, weight `(O, I, 1, 1)`, style `(B, I)` -> `(B, O, H, W)`.
    """
    B = x.shape[0]
    y = F.conv2d(x * style.to(x.dtype).view(B, -1, 1, 1), weight.to(x.dtype))
    if demodulate:
        w2 = weight.float().flatten(1).square()  # (O, I)
        dcoefs = (style.float().square() @ w2.t() + 1e-8).rsqrt()  # (B, O) = 1/||W[o,:] * s[b,:]||
        y = y * dcoefs.to(y.dtype).view(B, -1, 1, 1)
    return y


class ModulatedConvNeXtLayer(nn.Module):
    """Residual, style-modulated ConvNeXt layer, channels preserved. `(B, C, H, W), w (B, w_dim) -> (B, C, H, W)`.

    `h = DWConv_k(x) [+ legacy noise] -> GroupNorm32 -> modulated+demodulated 1x1 C->4C (+bias) -> GELU
    -> 1x1 4C->C -> layer scale`; returns `x + h`.
    `legacy`: a fixed random `noise_const` map of side `noise_resolution` times a learned scalar,
    bilinearly resized to the feature size (static, so deterministic). Needed by released weights.
    """

    def __init__(
        self,
        channels: int,
        w_dim: int,
        kernel_size: int,
        legacy: bool = False,
        noise_resolution: int = 8,
        layer_scale_init: float = 1e-5,
    ):
        super().__init__()
        self.style = StyleSplit(w_dim, channels)
        self.dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.legacy = legacy
        if legacy:
            self.register_buffer("noise_const", torch.randn(noise_resolution, noise_resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.norm = GroupNorm32(min(32, channels // 4), channels)
        self.pwconv1_weight = nn.Parameter(torch.empty(4 * channels, channels, 1, 1))
        self.pwconv1_bias = nn.Parameter(torch.zeros(4 * channels))
        self.pwconv2 = nn.Conv2d(4 * channels, channels, 1)
        self.layer_scale = nn.Parameter(torch.full((1, channels, 1, 1), layer_scale_init))
        for p in (self.dwconv.weight, self.pwconv1_weight, self.pwconv2.weight):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.dwconv.bias)
        nn.init.zeros_(self.pwconv2.bias)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x)
        if self.legacy:
            noise = (self.noise_const * self.noise_strength)[None, None]
            h = h + F.interpolate(noise, size=h.shape[-2:], mode="bilinear", align_corners=False).to(h.dtype)
        h = self.norm(h)
        h = modulated_pointwise(h, self.pwconv1_weight, self.style(w), demodulate=True)
        h = F.gelu(h + self.pwconv1_bias.to(h.dtype).view(1, -1, 1, 1))
        h = self.pwconv2(h)
        return x + self.layer_scale * h


class ModulatedToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, no demodulation, runtime gain 1/sqrt(C). `(B, C, H, W) -> (B, 3, H, W)`.

    Output is read as [-1, 1]; no tanh, no clamp (as the official decoder).
    """

    def __init__(self, channels: int, w_dim: int, out_channels: int = 3):
        super().__init__()
        self.style = StyleSplit(w_dim, channels)
        self.weight = nn.Parameter(0.1 * torch.randn(out_channels, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = modulated_pointwise(x, self.weight, self.style(w) * self.weight_gain, demodulate=False)
        return y + self.bias.to(y.dtype).view(1, -1, 1, 1)


class SeparableBlurUpsample(nn.Module):
    """Learned x2 upsampler with a fixed binomial blur. `(B, C_in, H, W) -> (B, C_out, 2H, 2W)`.

    `GroupNorm -> DW3x3 -> 1x1 C_in->4C_out -> PixelShuffle(2) -> blur (replicate padding)`; with
    `pre_norm=False` (first block) the GroupNorm acts on the output instead, before the blur.
    The blur kernel (`[1,2,1]` or `[1,4,6,4,1]` outer product, normalised) is a non-persistent buffer.
    """

    def __init__(
        self, in_channels: int, out_channels: int, blur_size: int = 3, pre_norm: bool = True, use_blur: bool = True
    ):
        super().__init__()
        if blur_size not in BINOMIAL_KERNELS:
            raise ValueError(f"SeparableBlurUpsample: blur_size must be one of {sorted(BINOMIAL_KERNELS)}")
        self.pre_norm, self.use_blur, self.out_channels = pre_norm, use_blur, out_channels
        norm_ch = in_channels if pre_norm else out_channels
        self.norm = nn.GroupNorm(min(32, norm_ch // 4), norm_ch)
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, 4 * out_channels, 1, bias=False)
        self.blur_size = blur_size
        self.register_buffer("blur_kernel", self._binomial(), persistent=False)
        self.pad = blur_size // 2

    def _binomial(self) -> torch.Tensor:
        k = torch.tensor(BINOMIAL_KERNELS[self.blur_size])
        k2 = torch.outer(k, k)
        return (k2 / k2.sum()).expand(self.out_channels, 1, -1, -1).clone()

    def reset_buffers(self) -> None:
        """Recompute the (non-persistent) blur kernel, e.g. after `to_empty()` of a meta build."""
        self.blur_kernel = self._binomial().to(self.blur_kernel.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = self.norm(x)
        x = F.pixel_shuffle(self.pointwise(self.depthwise(x)), 2)
        if not self.pre_norm:
            x = self.norm(x)
        if self.use_blur:
            x = F.pad(x, (self.pad,) * 4, mode="replicate")
            x = F.conv2d(x, self.blur_kernel.to(x.dtype), groups=self.out_channels)
        return x
