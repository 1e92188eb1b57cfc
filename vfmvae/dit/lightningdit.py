"""LightningDiT (Yao et al. 2025), the paper's first generator on VFM-VAE latents (docs/design.md, "Diffusion networks and the network interface").

adaLN-Zero DiT with SwiGLU, RMSNorm, QK-RMSNorm, 2-D axial RoPE on q/k after QK-norm, a fixed 2-D
sin-cos position embedding, a 1001-row label table (null id 1000) with label dropout, and
`forward(x, t, y)` predicting the flow velocity with **t = 1 = data** (docs/design.md, "Time
conventions"). Numerically identical to `hustvl/LightningDiT` `models/lightningdit.py` (checked against
`tests/fixtures/official/lightningdit_tiny.*`).

The network implements `vfmvae.dit.interface.DiffusionNetwork`: its state is the latent alone, its
condition the class ids, its paper sampler ``lightningdit-cfg``. Classifier-free guidance is *not* here:
it wraps the velocity function in `vfmvae.transport`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vfmvae.dit.conditions import ClassLabels
from vfmvae.dit.interface import NetworkOutput, SamplerPresets, TrainingState, vfm_class_token_state
from vfmvae.dit.latent_grid import LatentGridMixin, LightningDiTShape
from vfmvae.dit.layers import (
    Attention,
    GeluMlp,
    LabelEmbedder,
    PatchEmbed,
    RMSNorm,
    SwiGLU,
    TimestepEmbedder,
    modulate,
    official_dit_init,
    unpatchify,
)
from vfmvae.dit.pos_embed import AxialRoPE2d, sincos_2d_pos_embed
from vfmvae.transport.paths import TimeConvention


@dataclass(frozen=True)
class LightningDiTConfig(LightningDiTShape):
    """Shapes of a LightningDiT. Defaults are the VFM-VAE run: XL/1 on 32x16x16 latents."""

    input_size: int = 16  # latent side h = w
    patch_size: int = 1
    in_channels: int = 32
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # > 0 adds the null row (id num_classes)
    learn_sigma: bool = False
    use_qknorm: bool = True
    use_swiglu: bool = True
    use_rope: bool = True
    use_rmsnorm: bool = True
    wo_shift: bool = False  # True drops the adaLN shift vectors (4 instead of 6 per block)

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"LightningDiTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads} and by 4 (2-D sin-cos)"
            )
        if self.use_rope and self.head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")


def _preset(depth: int, hidden_size: int, num_heads: int, patch_size: int) -> LightningDiTConfig:
    return LightningDiTConfig(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size)


LIGHTNINGDIT_PRESETS: dict[str, LightningDiTConfig] = {
    "LightningDiT-B/1": _preset(12, 768, 12, 1),
    "LightningDiT-B/2": _preset(12, 768, 12, 2),
    "LightningDiT-L/1": _preset(24, 1024, 16, 1),
    "LightningDiT-L/2": _preset(24, 1024, 16, 2),
    "LightningDiT-XL/1": _preset(28, 1152, 16, 1),
    "LightningDiT-XL/2": _preset(28, 1152, 16, 2),
    # Tiny CPU config (same topology as lightningdit_tiny fixture).
    "debug": LightningDiTConfig(input_size=8, in_channels=8, hidden_size=64, depth=2, num_heads=4),
}


class LightningDiTBlock(nn.Module):
    """One adaLN-Zero transformer block; the FSDP-wrap and activation-checkpoint unit.

    `x (B, N, D), c (B, D) -> (B, N, D)`:
    `x += g1 * Attn(mod(norm1 x))`, `x += g2 * MLP(mod(norm2 x))` with the six (or four, `wo_shift`)
    modulation vectors from `Linear(SiLU(c))`.
    """

    def __init__(self, cfg: LightningDiTConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        # Official: without RMSNorm the block norms are affine-free LayerNorms (eps 1e-6) and
        # the q/k norms plain affine LayerNorms.
        block_norm = RMSNorm if cfg.use_rmsnorm else partial(nn.LayerNorm, elementwise_affine=False, eps=1e-6)
        qk_norm = (RMSNorm if cfg.use_rmsnorm else nn.LayerNorm) if cfg.use_qknorm else None
        self.norm1, self.norm2 = block_norm(D), block_norm(D)
        self.attn = Attention(D, cfg.num_heads, qk_norm=qk_norm)
        self.mlp = SwiGLU(D, cfg.mlp_hidden) if cfg.use_swiglu else GeluMlp(D, cfg.mlp_hidden)
        self.wo_shift = cfg.wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, (4 if cfg.wo_shift else 6) * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: nn.Module | None = None) -> torch.Tensor:
        mods = self.adaLN_modulation(c)
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = mods.chunk(4, dim=-1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope=rope)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class LightningDiTFinalLayer(nn.Module):
    """`(B, N, D), c -> (B, N, p*p*C_out)`: adaLN (shift + scale) then a linear head."""

    def __init__(self, cfg: LightningDiTConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.norm_final = RMSNorm(D) if cfg.use_rmsnorm else nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, cfg.patch_size**2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class LightningDiT(LatentGridMixin, nn.Module):
    """Velocity network `v(x, t, y)`: `x (B, C, H, W)`, `t (B,)` in [0, 1] (1 = data), `y (B,)`.

    `activation_checkpointing` recomputes each block in the backward pass (runtime knob, not a
    shape); `compile_blocks()` wraps each block in `torch.compile`. The `DiffusionNetwork` members
    follow `forward`.
    """

    time_convention = TimeConvention.DATA_AT_ONE
    sampler_presets = SamplerPresets(default="lightningdit-cfg", no_cfg="lightningdit")
    class_token_dim: int | None = None
    alignment_dim: int | None = None  # LightningDiTREPA sets its projector width
    fsdp_forward_methods: tuple[str, ...] = ()

    def __init__(self, config: LightningDiTConfig, *, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = cfg = config
        self.activation_checkpointing = activation_checkpointing
        self.in_channels, self.out_channels = cfg.in_channels, cfg.out_channels
        self.x_embedder = PatchEmbed(cfg.input_size, cfg.patch_size, cfg.in_channels, cfg.hidden_size)
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size, cfg.class_dropout_prob)
        # Fixed, recomputed table: a buffer (the official frozen nn.Parameter is not trainable).
        self.register_buffer("pos_embed", sincos_2d_pos_embed(cfg.hidden_size, cfg.grid_size)[None], persistent=False)
        self.feat_rope = AxialRoPE2d(cfg.head_dim, cfg.grid_size) if cfg.use_rope else None
        self.blocks = nn.ModuleList(LightningDiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = LightningDiTFinalLayer(cfg)
        self.condition = ClassLabels(cfg.num_classes, null_id=cfg.num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init: xavier linears, N(0, 0.02) label table and time MLP, zeroed adaLN and head."""
        blocks = [b.adaLN_modulation[-1] for b in self.blocks]
        official_dit_init(self, blocks + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear])

    def reset_buffers(self) -> None:
        """Recompute the fixed tables (needed after `to_empty()` of a `meta`-device model)."""
        self.pos_embed = sincos_2d_pos_embed(self.config.hidden_size, self.config.grid_size)[None].to(
            self.pos_embed.device
        )
        if self.feat_rope is not None:
            self.feat_rope.reset_buffers()

    def compile_blocks(self, **compile_kwargs) -> None:
        """`torch.compile` each block in place (parameter names and state_dict keys unchanged)."""
        for block in self.blocks:
            block.compile(**compile_kwargs)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W) -> (B, N, D)`: patch embedding plus sin-cos position (SE-CKNNA `embedder`)."""
        return self.x_embedder(x) + self.pos_embed.to(x.dtype)

    def embed_condition(self, t: torch.Tensor, y: torch.Tensor, batch: int, force_drop_ids=None) -> torch.Tensor:
        """`c = t_emb + y_emb`, `(B, D)`. A 0-d `t` is broadcast over the batch."""
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,) or y.shape != (batch,):
            raise ValueError(f"t and y must have shape ({batch},), got {tuple(t.shape)} and {tuple(y.shape)}")
        return self.t_embedder(t) + self.y_embedder(y, force_drop_ids)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        return_hidden: Iterable[int] | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ):
        """Velocity `(B, C, H, W)`; with `return_hidden=[i, ...]` also `{i: block_i output (B, N, D)}`.

        Block indices are 0-based; negative indices count from the last block.
        """
        wanted = self._normalise_indices(return_hidden)
        tokens = self.embed_tokens(x)
        c = self.embed_condition(t, y, x.shape[0], force_drop_ids)
        hidden: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, self.feat_rope, use_reentrant=False)
            else:
                tokens = block(tokens, c, self.feat_rope)
            if i in wanted:
                hidden[i] = tokens
        out = unpatchify(self.final_layer(tokens, c), self.config.patch_size, self.out_channels)
        if self.config.learn_sigma:
            out = out.chunk(2, dim=1)[0]
        return out if return_hidden is None else (out, hidden)

    # ------------------------------------------------------------------ DiffusionNetwork
    # latent_shape, token_grid, num_blocks, initial_state, velocity: `LatentGridMixin`
    def training_state(self, latents: torch.Tensor, alignment) -> TrainingState:
        return vfm_class_token_state(latents, alignment, None, self.alignment_dim)

    def training_forward(self, state: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> NetworkOutput:
        return NetworkOutput(self(state, t, condition))

    def block_features(self, state: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """`embedder`, `block_i` and `final_layer` tokens (the official LightningDiT extractor)."""
        depth = len(self.blocks)
        v, hidden = self(state, t, condition, return_hidden=list(range(depth)))
        feats = {"embedder": self.embed_tokens(state)}
        feats.update({f"block_{i}": hidden[i] for i in range(depth)})
        feats["final_layer"] = v.flatten(2).transpose(1, 2)  # (B, h*w, C): the head's tokens for patch size 1
        return feats

    def _normalise_indices(self, indices: Iterable[int] | None) -> set[int]:
        depth = self.config.depth
        result = set()
        for i in indices or ():
            if not -depth <= i < depth:
                raise ValueError(f"block index {i} out of range for depth {depth}")
            result.add(i % depth)
        return result


def build_lightningdit(
    preset: str = "LightningDiT-XL/1", *, activation_checkpointing: bool = False, **overrides
) -> LightningDiT:
    """Build from a named preset (`LIGHTNINGDIT_PRESETS`), with optional shape overrides."""
    if preset not in LIGHTNINGDIT_PRESETS:
        raise KeyError(f"unknown LightningDiT preset {preset!r}; choose from {sorted(LIGHTNINGDIT_PRESETS)}")
    return LightningDiT(
        replace(LIGHTNINGDIT_PRESETS[preset], **overrides), activation_checkpointing=activation_checkpointing
    )
