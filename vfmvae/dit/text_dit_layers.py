"""Layers of the text-conditioned DiT (docs/text_to_image.md, "The network"): the LightningDiT block with
cross-attention to the text tokens, and the embedder of the text features.

Shapes: image tokens ``(B, N, D)``, conditioning vector ``c (B, D)``, text context ``(B, L, D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.dit.layers import RMSNorm, modulate
from vfmvae.dit.lightningdit import LightningDiTBlock

__all__ = ["CrossAttention", "TextDiTBlock", "ContextEmbedder"]


class CrossAttention(nn.Module):
    """Image tokens attend to text tokens: ``x (B, N, D), context (B, L, D) -> (B, N, D)``.

    q from ``x``, fused k/v from the context, per-head RMS QK-norm (the self-attention's choice in
    LightningDiT), no positions (the text features already carry them). ``proj`` starts at zero, so a new
    network is the unconditional DiT and the text enters as training finds it useful (PixArt-style init).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        L = context.shape[1]
        q = self.q_norm(self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2))
        k, v = self.kv(context).reshape(B, L, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class TextDiTBlock(LightningDiTBlock):
    """LightningDiT block + cross-attention between self-attention and MLP (PixArt-alpha placement).

    ``x += g1 * Attn(mod(norm1 x))``; ``x += CrossAttn(norm_cross x, context)``; ``x += g2 * MLP(mod(norm2 x))``.
    The FSDP2 wrap unit and the activation-checkpoint unit of the text network.
    """

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        D = cfg.hidden_size
        self.norm_cross = RMSNorm(D) if cfg.use_rmsnorm else nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(D, cfg.num_heads, qk_norm=cfg.use_qknorm)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: nn.Module | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        if context is None:
            raise ValueError("TextDiTBlock needs the text context (B, L, D)")
        mods = self.adaLN_modulation(c)
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = mods.chunk(4, dim=-1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope=rope)
        x = x + self.cross_attn(self.norm_cross(x), context)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class ContextEmbedder(nn.Module):
    """Text features ``(B, L, D_t)`` -> context ``(B, L, D)``: LayerNorm, Linear, GELU-tanh, Linear (the
    projection of the BLIP3-o query features; the same head serves SigLIP text features)."""

    def __init__(self, feature_dim: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(features)), approximate="tanh"))
