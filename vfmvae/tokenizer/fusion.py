"""Multi-Scale Latent Fusion: spatial-latent adapters of the first synthesis blocks (docs/design.md,
"Tokenizer architecture").

Block `i` (output side `r_i`) receives its input at `r_i/2`; its adapter brings the lifted latent
`(B, D, h, w)` (D = 512, h = w = 16 at 256 px) to that size and to `fusion_dims[i]` channels, and the
result is concatenated with the previous block's features. The resampling mode is fixed at build
time from the native sizes, so at other input sizes the spatial ratios are preserved:

| target vs latent | recipe |
|---|---|
| smaller by f (f = 4, 2) | PixelUnshuffle(f) -> [DW3x3 -> 1x1 D*f^2 -> d -> GN -> act] -> [1x1 d -> d -> GN] |
| equal | [DW3x3 -> 1x1 D -> d -> GN -> act] -> [1x1 d -> d -> GN] |
| larger by f (f = 2) | [DW3x3 -> 1x1 D -> d*f^2 -> GN -> act] -> PixelShuffle(f) -> [1x1 d -> d -> GN] |

All convs bias-free, GroupNorm groups `min(32, C)` computed in float32, activation lrelu(0.2) in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32

_ACTIVATIONS = {"lrelu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU, "gelu": nn.GELU}


def _expand(cin: int, cout: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        GroupNorm32(min(32, cout), cout),
        _ACTIVATIONS[activation](),
    )


def _refine(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 1, bias=False), GroupNorm32(min(32, c), c))


class LatentAdapter(nn.Module):
    """`(B, D, h, w) -> (B, out_dim, h*r, w*r)` with `r = target_size / z_size` in {1/4, 1/2, 1, 2, ...}.

    `z_size`, `target_size` are the native (build-time) latent side and block input side.
    """

    def __init__(self, in_dim: int, out_dim: int, z_size: int, target_size: int, activation: str = "lrelu"):
        super().__init__()
        self.unshuffle = self.shuffle = 1
        if target_size < z_size:
            if z_size % target_size:
                raise ValueError(f"LatentAdapter: latent side {z_size} not a multiple of target {target_size}")
            self.unshuffle = z_size // target_size
            self.expand = _expand(in_dim * self.unshuffle**2, out_dim, activation)
        elif target_size > z_size:
            if target_size % z_size:
                raise ValueError(f"LatentAdapter: target side {target_size} not a multiple of latent {z_size}")
            self.shuffle = target_size // z_size
            self.expand = _expand(in_dim, out_dim * self.shuffle**2, activation)
        else:
            self.expand = _expand(in_dim, out_dim, activation)
        self.refine = _refine(out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            h, w = z.shape[-2:]
            if h % self.unshuffle or w % self.unshuffle:
                raise ValueError(
                    f"latent side {h}x{w} must be divisible by {self.unshuffle} "
                    f"(the first fusion adapter unshuffles by that factor)"
                )
            z = F.pixel_unshuffle(z, self.unshuffle)
        z = self.expand(z)
        if self.shuffle > 1:
            z = F.pixel_shuffle(z, self.shuffle)
        return self.refine(z)
