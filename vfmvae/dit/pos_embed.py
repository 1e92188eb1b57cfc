"""Position encodings of the two diffusion transformers (docs/design.md, "Diffusion networks and the network interface").

* `sincos_2d_pos_embed`: the fixed MAE/DiT 2-D sin-cos table that both models *add* to the patch
  tokens, `(grid*grid [+ extra], D)`. REG prepends an all-zero row for its class token.
* `AxialRoPE2d`: LightningDiT's 2-D axial rotary embedding (EVA-02 "fast" variant) applied to
  q and k after QK-norm. Each spatial axis gets half of the head dimension; rotation pairs are
  *interleaved* channels (2i, 2i+1), not the two halves of the vector.

Both tables are computed, never learned: the official checkpoints store them (as a frozen
parameter and as buffers), and the converters compare the stored copies with ours instead of
loading them.
"""

from __future__ import annotations

import torch
from torch import nn


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """`(M,) -> (M, embed_dim)`: `[sin(p * w_i), cos(p * w_i)]`, `w_i = 10000^(-2i/embed_dim)`.

    Computed in float64 like the official NumPy code, so the float32 table matches bit-for-bit
    up to rounding of the final cast.
    """
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: int, extra_tokens: int = 0) -> torch.Tensor:
    """Fixed 2-D sin-cos table `(extra_tokens + grid_size**2, embed_dim)`, float32.

    Row order is raster order (row-major over (h, w)), matching the patch-token order. The first
    half of the channels encodes the *column* index and the second half the *row* index: this is
    the official `np.meshgrid(grid_w, grid_h)` quirk ("here w goes first"), kept for weight
    compatibility. `extra_tokens` zero rows are prepended (REG's class token).
    """
    if embed_dim % 2:
        raise ValueError(f"2-D sin-cos embedding needs an even dimension, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (H, W) each
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if extra_tokens:
        emb = torch.cat([torch.zeros(extra_tokens, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """`(..., 2k) -> (..., 2k)`: each interleaved pair `(a, b)` becomes `(-b, a)`."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs.unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


def axial_rope_tables(head_dim: int, grid_size: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `(grid_size**2, head_dim)` for 2-D axial RoPE.

    Per axis `d = head_dim // 2` channels with frequencies `theta^(-2i/d)`, i < d/2, each repeated
    for its interleaved pair. Token (r, c) in raster order uses row frequencies on the first `d`
    channels and column frequencies on the last `d` (36 + 36 for XL).
    """
    if head_dim % 4:
        raise ValueError(f"axial 2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    axis_dim = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim)
    pos = torch.arange(grid_size, dtype=torch.float32)
    angles = torch.repeat_interleave(pos[:, None] * freqs[None], 2, dim=-1)  # (G, axis_dim)
    rows = angles[:, None, :].expand(grid_size, grid_size, axis_dim)
    cols = angles[None, :, :].expand(grid_size, grid_size, axis_dim)
    table = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, head_dim)
    return table.cos(), table.sin()


class AxialRoPE2d(nn.Module):
    """2-D axial rotary embedding for `(B, heads, N, head_dim)` q/k with `N = grid_size**2`.

    The tables are non-persistent buffers (recomputed, not loaded); call `reset_buffers()` after
    materialising a model built on the `meta` device.
    """

    def __init__(self, head_dim: int, grid_size: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.grid_size, self.theta = head_dim, grid_size, theta
        cos, sin = axial_rope_tables(head_dim, grid_size, theta)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def reset_buffers(self) -> None:
        cos, sin = axial_rope_tables(self.head_dim, self.grid_size, self.theta)
        self.freqs_cos = cos.to(self.freqs_cos.device)
        self.freqs_sin = sin.to(self.freqs_sin.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.freqs_cos.shape:
            raise ValueError(f"RoPE expects (..., {self.grid_size**2} tokens, {self.head_dim}), got {tuple(x.shape)}")
        cos, sin = self.freqs_cos.to(x.dtype), self.freqs_sin.to(x.dtype)
        return x * cos + rotate_pairs(x) * sin
