"""Attention projection: the token-wise width changer of the latent head and the decoder lift.

docs/design.md, "Tokenizer architecture" ("AttnProjection block", adapted by VFM-VAE from UniTok). One block maps
tokens `(B, N, in_dim) -> (B, N, out_dim)`:

    y = shortcut(LN(x)) + attn(LN(x))          # linear shortcut + projecting attention
    y = y + GeGLU(LN(y))

The attention *compresses* (in > out) by running `in/out` heads of width `out` and **averaging
the heads** (not concatenating them), or *expands* (in < out) by running `out/in` heads of width
`in` and concatenating them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectingAttention(nn.Module):
    """Multi-head self-attention whose output width differs from its input width.

    qkv has no bias of its own: a learnable q-bias and v-bias and a fixed zero k-bias (a k-bias
    is softmax-invariant, so it is not learned). Shapes: `(B, N, in_dim) -> (B, N, out_dim)`.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.in_dim, self.out_dim, self.num_heads = in_dim, out_dim, num_heads
        self.compress = in_dim > out_dim
        width = in_dim if self.compress else out_dim  # total q/k/v width
        if width % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {width} ({in_dim}->{out_dim})")
        self.head_dim = width // num_heads
        self.qkv = nn.Linear(in_dim, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.out = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        if self.compress:
            h = h.mean(dim=1)  # head averaging: (B, N, head_dim)
            if self.head_dim != self.out_dim:  # only when in/heads != out (never in the paper)
                h = F.adaptive_avg_pool1d(h, self.out_dim)
        else:
            h = h.transpose(1, 2).reshape(B, N, self.out_dim)
        return self.out(h)


class GeGLU(nn.Module):
    """`W2(gelu_tanh(W0 LN(x)) * W1 LN(x))`, hidden = ratio x dim, LayerNorm eps 1e-6."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))


class AttnProjectionBlock(nn.Module):
    """One projection block `(B, N, in_dim) -> (B, N, out_dim)`."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, mlp_ratio: int = 2):
        super().__init__()
        if in_dim % out_dim and out_dim % in_dim:
            raise ValueError(f"AttnProjectionBlock: one of in_dim={in_dim}, out_dim={out_dim} must divide the other")
        self.attn_norm = nn.LayerNorm(in_dim)
        self.attn = ProjectingAttention(in_dim, out_dim, num_heads)
        self.shortcut_norm = nn.LayerNorm(in_dim)
        self.shortcut = nn.Linear(in_dim, out_dim)
        self.mlp_norm = nn.LayerNorm(out_dim)
        self.mlp = GeGLU(out_dim, out_dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(self.shortcut_norm(x)) + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class AttnProjection(nn.Module):
    """A stack of `num_layers` projection blocks; the width changes in the last block when
    compressing (encoder head) and in the first block when expanding (decoder lift).

    Heads: `max(1, in/out)` when compressing, `max(1, out/in)` when expanding (official rule).
    Init (official `init_weights`, gain 0.5 variant): Linear trunc-normal std 0.02, biases 0, LN (1, 0).
    """

    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 1):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"AttnProjection: num_layers must be >= 1, got {num_layers}")
        compress = in_dim > out_dim
        heads = max(1, in_dim // out_dim) if compress else max(1, out_dim // in_dim)
        if compress:
            dims = [(in_dim, in_dim)] * (num_layers - 1) + [(in_dim, out_dim)]
        else:
            dims = [(in_dim, out_dim)] + [(out_dim, out_dim)] * (num_layers - 1)
        self.blocks = nn.ModuleList(AttnProjectionBlock(i, o, heads) for i, o in dims)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, N, in_dim) -> (B, N, out_dim)`."""
        for block in self.blocks:
            x = block(x)
        return x
