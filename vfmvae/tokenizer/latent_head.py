"""Latent head: multi-level VFM tokens -> (mean, logvar) of the latent (docs/design.md, "Tokenizer architecture").

For each VFM level `i` (layers 0, 12, -1 in the paper):
    (B, N, D) --AttnProjection(D -> d_i, head averaging)--> (B, N, d_i)
              --token space-to-depth x s--> (B, N/s^2, d_i*s^2)
levels are concatenated on channels and `final_projection` maps them to `2*z_dim` channels,
returned as a `(B, 2*z_dim, h, w)` moment map wrapped in a `DiagonalGaussian`.
At 256 px: 3 x (B, 1024, 1024) -> 3 x (B, 256, 256) -> (B, 256, 768) -> (B, 64, 16, 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attn_projection import AttnProjection
from .config import VFMVAEConfig
from .posterior import DiagonalGaussian


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major tokens `(B, h*w, C)` -> feature map `(B, C, h, w)`."""
    B, N, C = tokens.shape
    h, w = grid
    if N != h * w:
        raise ValueError(f"token count {N} does not match the grid {h}x{w}")
    return tokens.transpose(1, 2).reshape(B, C, h, w)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Feature map `(B, C, h, w)` -> row-major tokens `(B, h*w, C)`."""
    return x.flatten(2).transpose(1, 2)


def token_space_to_depth(tokens: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """`(B, h*w, C) -> (B, h*w/f^2, C*f^2)` with PyTorch PixelUnshuffle's channel order `c*f^2 + dy*f + dx`."""
    if factor == 1:
        return tokens
    return grid_to_tokens(F.pixel_unshuffle(tokens_to_grid(tokens, grid), factor))


class LatentHead(nn.Module):
    """Trainable encoder head on top of the frozen VFM (11.6 M params in the paper preset).

    `forward(features, grid) -> DiagonalGaussian` where `features` is the list of VFM token
    tensors `(B, h_t*w_t, D)` and `grid = (h_t, w_t)` their token grid.
    """

    def __init__(self, cfg: VFMVAEConfig):
        super().__init__()
        self.space_to_depth = cfg.space_to_depth
        self.level_projections = nn.ModuleList(
            AttnProjection(cfg.vfm_hidden_size, d, cfg.head_layers) for d in cfg.level_dims
        )
        concat_dim = sum(d * self.space_to_depth**2 for d in cfg.level_dims)
        self.final_projection = AttnProjection(concat_dim, 2 * cfg.z_dim, cfg.head_layers)
        # Stage 0-1 VF-alignment head (docs/design.md, "Tokenizer stages and losses"): 1x1 conv on the *sampled* z, Xavier gain 0.5.
        self.vf_projection = None
        if cfg.use_vf_projection:
            self.vf_projection = nn.Conv2d(cfg.z_dim, cfg.vfm_hidden_size, 1, bias=False)
            nn.init.xavier_normal_(self.vf_projection.weight, gain=0.5)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight the adaptive VF-loss weight differentiates against (last GeGLU `w2`)."""
        return self.final_projection.blocks[-1].mlp.w2.weight

    def moments(self, features: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """`(B, 2*z_dim, h, w)` = cat(mean, logvar), logvar not yet clamped."""
        if len(features) != len(self.level_projections):
            raise ValueError(
                f"LatentHead: expected {len(self.level_projections)} VFM feature levels, got {len(features)}"
            )
        s = self.space_to_depth
        if grid[0] % s or grid[1] % s:
            raise ValueError(f"LatentHead: VFM token grid {grid} is not divisible by the space-to-depth factor {s}")
        levels = [token_space_to_depth(proj(f), grid, s) for f, proj in zip(features, self.level_projections)]
        x = self.final_projection(torch.cat(levels, dim=-1))
        return tokens_to_grid(x, (grid[0] // s, grid[1] // s))

    def forward(self, features: Sequence[torch.Tensor], grid: tuple[int, int]) -> DiagonalGaussian:
        return DiagonalGaussian(self.moments(features, grid))
