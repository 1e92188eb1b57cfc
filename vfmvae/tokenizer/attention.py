"""Self-attention block of the low-resolution synthesis blocks (GigaGAN-style), docs/design.md, "Tokenizer architecture".

`x = x + Attn(x); x = x + FF(x)` on a feature map `(B, C, H, W)`. The attention attends over all
H*W positions plus one learned **null key/value** per head (lets a query attend to nothing); the
output projection and the FF output weight are zero-initialised so a fresh block is the identity.
Not modulated by w.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ChannelRMSNorm


class NullKVSelfAttention(nn.Module):
    """Multi-head self-attention over pixels with a learned null key/value. `(B, C, H, W) -> (B, C, H, W)`."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"NullKVSelfAttention: heads={heads} must divide dim={dim}")
        self.heads, self.dim_head = heads, dim // heads
        self.norm = ChannelRMSNorm(dim)
        self.to_q = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_k = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_v = nn.Conv2d(dim, dim, 1, bias=False)
        self.null_kv = nn.Parameter(0.02 * torch.randn(2, heads, self.dim_head))
        self.to_out = nn.Conv2d(dim, dim, 1, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, _, H, W = t.shape  # channel c = head * dim_head + d
        return t.view(B, self.heads, self.dim_head, H * W).transpose(-1, -2)  # (B, h, HW, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = self.norm(x)
        q, k, v = (self._split_heads(f(x)) for f in (self.to_q, self.to_k, self.to_v))
        null_k, null_v = (t.to(k.dtype).unsqueeze(0).unsqueeze(2).expand(B, -1, 1, -1) for t in self.null_kv)
        k = torch.cat([null_k, k], dim=2)
        v = torch.cat([null_v, v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, d)
        return self.to_out(out.transpose(-1, -2).reshape(B, C, H, W))


class ChannelFeedForward(nn.Module):
    """`ChannelRMSNorm -> 1x1 C->mult*C -> GELU -> 1x1 -> C` (output weight zero-init). `(B, C, H, W)`."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.norm = ChannelRMSNorm(dim)
        self.fc1 = nn.Conv2d(dim, dim * mult, 1)
        self.fc2 = nn.Conv2d(dim * mult, dim, 1)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class SelfAttentionBlock(nn.Module):
    """Residual attention + feed-forward. `(B, C, H, W) -> (B, C, H, W)`."""

    def __init__(self, dim: int, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.attn = NullKVSelfAttention(dim, heads)
        self.ff = ChannelFeedForward(dim, ff_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)
