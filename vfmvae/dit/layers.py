"""Building blocks shared by LightningDiT and REG SiT (docs/design.md, "Diffusion networks and the network interface").

Shapes: tokens `(B, N, D)`, conditioning vectors `(B, D)`, latents `(B, C, H, W)`.
Every layer keeps the official parameter layout (fused `qkv`, fused SwiGLU `w12`), so the
checkpoint converters are plain renames.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x * (1 + scale) + shift` with `x (B, N, D)` and `shift, scale (B, D)`.

    `shift=None` is LightningDiT's `wo_shift` variant (scale only).
    """
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain (LLaMA form, eps 1e-6), over the last dimension.

    Statistics in float32 whatever the input dtype (style rule 8), result cast back, then the
    gain is applied, in that order, as in LightningDiT's `models/rmsnorm.py`.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """`w3(silu(x1) * x2)` with `[x1, x2] = w12(x)` fused; `(B, N, D) -> (B, N, D)`.

    LightningDiT uses `hidden = int(2/3 * mlp_ratio * D)` (3072 for XL), biases on.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class GeluMlp(nn.Module):
    """DiT/SiT MLP: `fc2(gelu_tanh(fc1(x)))`, `(B, N, D) -> (B, N, D)` (timm `Mlp` layout)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention`.

    `(B, N, D) -> (B, N, D)`. q and k are normalised per head (`qk_norm` builds a norm over
    `head_dim`) and then, if a rotary module is given, rotated: the order is QK-norm -> RoPE, as
    in LightningDiT. The official REG code can run a non-fused softmax path (`fused_attn=False`);
    it is the same function, so we always use SDPA.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class PatchEmbed(nn.Module):
    """Non-overlapping patchify: `(B, C, H, W) -> (B, (H/p)*(W/p), D)`, raster order."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected latents of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """`(B, h*w, p*p*C) -> (B, C, h*p, w*p)` for a square token grid (inverse of `PatchEmbed`)."""
    B, N, _ = x.shape
    h = math.isqrt(N)
    x = x.reshape(B, h, h, patch_size, patch_size, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch_size, h * patch_size)


class TimestepEmbedder(nn.Module):
    """Raw scalar time `(B,)` -> `(B, D)`: sinusoid (GLIDE/DiT, `[cos, sin]`, max period 1e4) + MLP.

    The time is not rescaled: LightningDiT feeds t in [0, 1] with t=1 = data, REG t in [0, 1] with
    t=1 = noise (docs/design.md, "Time conventions"). The sinusoid is computed in float32.
    """

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 1:
            raise ValueError(f"expected one time value per sample, shape (B,), got {tuple(t.shape)}")
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class ids `(B,)` -> `(B, D)`; row `num_classes` is the null class (CFG).

    In training, each label is replaced by the null id with probability `dropout_prob`
    (classifier-free guidance training, DiT). `force_drop_ids (B,)` (1 = drop) overrides the draw.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if labels.ndim != 1 or labels.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"expected integer class ids of shape (B,), got {labels.dtype} {tuple(labels.shape)}")
        rows = self.embedding_table.num_embeddings
        if labels.device.type == "cpu" and labels.numel() and (labels.min() < 0 or labels.max() >= rows):
            # Only checked on CPU: a value check on an accelerator would force a host sync per step.
            raise ValueError(
                f"class ids must lie in [0, {rows - 1}] (null id {self.num_classes}), got {labels.tolist()}"
            )
        if force_drop_ids is not None:
            labels = torch.where(force_drop_ids == 1, self.num_classes, labels)
        elif self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


def official_dit_init(model: nn.Module, zero_layers: list[nn.Linear]) -> None:
    """The DiT/SiT/LightningDiT weight init shared by both models.

    Xavier-uniform linears with zero bias, the patch-embedding conv as a Linear over the flattened
    patch, N(0, 0.02) label table and time MLP, and zeros for `zero_layers` (adaLN-Zero modulations and
    output heads). `model` must have `x_embedder.proj`, `y_embedder.embedding_table`, `t_embedder.mlp`.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    w = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for layer in zero_layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
