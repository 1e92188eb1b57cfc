"""Cross-attention to text tokens in the synthesis blocks of a text-conditional decoder (docs/conditional.md).

GigaGAN-style, as the official `CrossAttentionBlock` (after the self-attention blocks of every block with
attention depth > 0; `cfg.cross_attention`): `x = x + CrossAttn(x, text); x = x + FF(x)` on a feature map
`(B, C, H, W)` with the fine text tokens `(B, L, C_text)` as keys and values.

    q = 1x1 conv of ChannelRMSNorm(x)                         (B, heads, H*W, d)
    k, v = Linear(RMSNorm(text)) split in two                  (B, heads, L, d), bias-free
    k, v = cat(learned null k/v, k, v)                         (B, heads, 1 + L, d)
    mask = cat(False, text_mask)                               True = attend; pad tokens are False

The learned null key/value is prepended with mask **False**, so with a mask it is never attended: the
official code does exactly this (its boolean SDPA mask pads the null slot with zeros). It is kept for
weight compatibility and takes part only when no mask is given. The output projection and the FF
output weight start at zero, so a fresh block is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ChannelFeedForward
from .layers import ChannelRMSNorm


class TokenRMSNorm(nn.Module):
    """RMS norm over the last dim: `normalize(x, dim=-1) * sqrt(C) * gamma`. `(..., C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class MaskedCrossAttention(nn.Module):
    """`forward(x (B, C, H, W), context (B, L, C_ctx), mask (B, L) bool | None) -> (B, C, H, W)`."""

    def __init__(self, dim: int, context_dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MaskedCrossAttention: heads={heads} must divide dim={dim}")
        self.heads, self.dim_head = heads, dim // heads
        self.norm = ChannelRMSNorm(dim)
        self.norm_context = TokenRMSNorm(context_dim)
        self.to_q = nn.Conv2d(dim, dim, 1, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Conv2d(dim, dim, 1, bias=False)
        nn.init.zeros_(self.to_out.weight)
        self.null_kv = nn.Parameter(0.02 * torch.randn(2, heads, self.dim_head))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.to_q(self.norm(x)).view(B, self.heads, self.dim_head, H * W).transpose(-1, -2)
        kv = self.to_kv(self.norm_context(context.to(x.dtype)))  # (B, L, 2C): k channels first, then v
        k, v = (t.reshape(B, -1, self.heads, self.dim_head).transpose(1, 2) for t in kv.chunk(2, dim=-1))
        null_k, null_v = (t.to(k.dtype).unsqueeze(0).unsqueeze(2).expand(B, -1, 1, -1) for t in self.null_kv)
        k = torch.cat([null_k, k], dim=2)
        v = torch.cat([null_v, v], dim=2)
        attn_mask = None
        if mask is not None:
            if mask.shape != context.shape[:2]:
                raise ValueError(f"text mask {tuple(mask.shape)} does not match the tokens {tuple(context.shape[:2])}")
            null = torch.zeros(B, 1, dtype=torch.bool, device=mask.device)  # the official null slot is masked out
            attn_mask = torch.cat([null, mask.bool()], dim=1)[:, None, None, :]  # (B, 1, 1, 1 + L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, HW, d)
        return self.to_out(out.transpose(-1, -2).reshape(B, C, H, W))


class CrossAttentionBlock(nn.Module):
    """Residual cross-attention + feed-forward. `forward(x (B, C, H, W), tokens (B, L, C_text), mask (B, L))`."""

    def __init__(self, dim: int, context_dim: int, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, context_dim, heads)
        self.ff = ChannelFeedForward(dim, ff_mult)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(x, tokens, mask)
        return x + self.ff(x)


__all__ = ["CrossAttentionBlock", "MaskedCrossAttention", "TokenRMSNorm"]
