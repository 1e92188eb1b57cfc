"""REG SiT (Wu et al. 2025, "Representation Entanglement for Generation"), the paper's headline
generator (gFID 2.22 at 80 epochs, 1.62 at 640 on VFM-VAE latents).

A SiT (LayerNorm, GELU-tanh MLP, timm-style attention with LayerNorm QK-norm, adaLN-Zero) whose
sequence starts with one extra *class token*: a noisy DINOv2 cls vector `(B, z_dim)` enters through
`Linear(z_dim -> D)` + affine LayerNorm with a zero position embedding. After block
`encoder_depth` a projector MLP maps all `1 + N` tokens to the alignment space (REPA loss
target, `zs`); the final layer predicts the latent velocity from the patch tokens and the class
token velocity from token 0. **t = 1 = noise** (docs/design.md, "Time conventions"). Numerically
identical to VFM-VAE's `tools/preprocess_for_reg/sit.py` (checked against
`tests/fixtures/official/sit_reg_tiny.*`).

As a `vfmvae.dit.interface.DiffusionNetwork` its state is ``(latent, class token)``, its paper sampler
``reg-cfg``; the class token is token 0 of every block (the probes skip it, except for the projector
features, as the official extractor). The alignment callback supplies the targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vfmvae.dit.conditions import ClassLabels
from vfmvae.dit.interface import NetworkOutput, SamplerPresets, TrainingState, vfm_class_token_state
from vfmvae.dit.latent_grid import LatentGridMixin
from vfmvae.dit.layers import (
    Attention,
    GeluMlp,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    modulate,
    official_dit_init,
    unpatchify,
)
from vfmvae.dit.pos_embed import sincos_2d_pos_embed
from vfmvae.transport.paths import TimeConvention


@dataclass(frozen=True)
class SiTREGConfig:
    """Shapes of a REG SiT. Defaults are the VFM-VAE run: SiT-XL/1 on 32x16x16 latents, DINOv2-B."""

    input_size: int = 16
    patch_size: int = 1
    in_channels: int = 32
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    qk_norm: bool = True
    encoder_depth: int = 8  # projector reads the output of block `encoder_depth` (1-based)
    projector_dim: int = 2048
    z_dims: tuple[int, ...] = (768,)  # one projector per alignment target; z_dims[0] = class token dim

    def __post_init__(self) -> None:
        for name in (
            "input_size",
            "patch_size",
            "in_channels",
            "hidden_size",
            "depth",
            "num_heads",
            "num_classes",
            "projector_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SiTREGConfig.{name} must be positive, got {getattr(self, name)}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads} and by 4 (2-D sin-cos)"
            )
        if not 1 <= self.encoder_depth <= self.depth:
            raise ValueError(f"encoder_depth must be in [1, depth={self.depth}], got {self.encoder_depth}")
        if not self.z_dims or min(self.z_dims) < 1:
            raise ValueError(f"z_dims must be a non-empty tuple of positive sizes, got {self.z_dims}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @property
    def cls_token_dim(self) -> int:
        # The official constructor overwrites its `cls_token_dim` argument with z_dims[0].
        return self.z_dims[0]

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size


def _preset(depth: int, hidden_size: int, num_heads: int, patch_size: int, encoder_depth: int) -> SiTREGConfig:
    return SiTREGConfig(
        depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size, encoder_depth=encoder_depth
    )


# Encoder depths follow REPA/REG: 4 for B, 8 for L and XL.
SIT_REG_PRESETS: dict[str, SiTREGConfig] = {
    "SiT-B/1-REG": _preset(12, 768, 12, 1, 4),
    "SiT-B/2-REG": _preset(12, 768, 12, 2, 4),
    "SiT-L/1-REG": _preset(24, 1024, 16, 1, 8),
    "SiT-L/2-REG": _preset(24, 1024, 16, 2, 8),
    "SiT-XL/1-REG": _preset(28, 1152, 16, 1, 8),
    "SiT-XL/2-REG": _preset(28, 1152, 16, 2, 8),
    # Tiny CPU config (same topology as the sit_reg_tiny fixture).
    "debug": SiTREGConfig(
        input_size=8,
        in_channels=8,
        hidden_size=64,
        depth=3,
        num_heads=4,
        encoder_depth=2,
        projector_dim=64,
        z_dims=(32,),
    ),
}


def build_projector(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """REPA projector `(..., D) -> (..., z_dim)`: Linear-SiLU-Linear-SiLU-Linear (8.13 M for XL/DINOv2-B)."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


class SiTREGBlock(nn.Module):
    """SiT adaLN-Zero block, `x (B, 1+N, D), c (B, D) -> (B, 1+N, D)`; the FSDP/checkpoint unit."""

    def __init__(self, cfg: SiTREGConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        # timm's Attention builds its q/k norms as `nn.LayerNorm(head_dim)`: affine, eps 1e-5.
        self.attn = Attention(D, cfg.num_heads, qk_norm=nn.LayerNorm if cfg.qk_norm else None)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = GeluMlp(D, int(D * cfg.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class SiTREGFinalLayer(nn.Module):
    """adaLN + heads: patch tokens -> `(B, N, p*p*C)`, class token (token 0) -> `(B, z_dim)`."""

    def __init__(self, cfg: SiTREGConfig) -> None:
        super().__init__()
        D = cfg.hidden_size
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, cfg.patch_size**2 * cfg.in_channels)
        self.linear_cls = nn.Linear(D, cfg.cls_token_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x[:, 1:]), self.linear_cls(x[:, 0])


class REGOutput(NamedTuple):
    """`velocity (B, C, H, W)`, `projections` = one `(B, 1+N, z_dim)` per projector (token 0 = class
    slot), `cls_velocity (B, z_dim)`. Unpacks like the official `v, zs, cls_v = model(...)`."""

    velocity: torch.Tensor
    projections: list[torch.Tensor]
    cls_velocity: torch.Tensor


class SiTREG(LatentGridMixin, nn.Module):
    """REG velocity network on the joint state (latent, class token); t = 1 is noise.

    The `DiffusionNetwork` members follow `forward`.
    """

    time_convention = TimeConvention.NOISE_AT_ONE
    sampler_presets = SamplerPresets(default="reg-cfg", no_cfg="reg")
    fsdp_forward_methods: tuple[str, ...] = ()

    def __init__(self, config: SiTREGConfig, *, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = cfg = config
        self.activation_checkpointing = activation_checkpointing
        self.in_channels = self.out_channels = cfg.in_channels
        D = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.input_size, cfg.patch_size, cfg.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D, cfg.class_dropout_prob)
        # Zero row for the class token in front of the fixed sin-cos table.
        self.register_buffer("pos_embed", sincos_2d_pos_embed(D, cfg.grid_size, extra_tokens=1)[None], persistent=False)
        self.blocks = nn.ModuleList(SiTREGBlock(cfg) for _ in range(cfg.depth))
        self.projectors = nn.ModuleList(build_projector(D, cfg.projector_dim, z) for z in cfg.z_dims)
        self.final_layer = SiTREGFinalLayer(cfg)
        # Official names: the class-token input projection and its LayerNorm.
        self.cls_projectors2 = nn.Linear(cfg.cls_token_dim, D)
        self.wg_norm = nn.LayerNorm(D, eps=1e-6)
        self.condition = ClassLabels(cfg.num_classes, null_id=cfg.num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init: xavier linears, N(0, 0.02) label table/time MLP, zeroed adaLN and both heads."""
        blocks = [b.adaLN_modulation[-1] for b in self.blocks]
        official_dit_init(
            self, blocks + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear, self.final_layer.linear_cls]
        )

    def reset_buffers(self) -> None:
        """Recompute the fixed position table (after `to_empty()` of a `meta`-device model)."""
        table = sincos_2d_pos_embed(self.config.hidden_size, self.config.grid_size, extra_tokens=1)[None]
        self.pos_embed = table.to(self.pos_embed.device)

    def compile_blocks(self, **compile_kwargs) -> None:
        """`torch.compile` each block in place (state_dict keys unchanged)."""
        for block in self.blocks:
            block.compile(**compile_kwargs)

    def embed_tokens(self, x: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        """`x (B, C, H, W), cls_token (B, z_dim) -> (B, 1+N, D)` with position embedding added."""
        if cls_token is None:
            raise ValueError("REG SiT needs cls_token (B, z_dim): the class token is part of its input state")
        if cls_token.ndim != 2 or cls_token.shape != (x.shape[0], self.config.cls_token_dim):
            raise ValueError(
                f"cls_token must have shape ({x.shape[0]}, {self.config.cls_token_dim}), got {tuple(cls_token.shape)}"
            )
        cls = self.wg_norm(self.cls_projectors2(cls_token)).unsqueeze(1)
        return torch.cat([cls, self.x_embedder(x)], dim=1) + self.pos_embed.to(x.dtype)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cls_token: torch.Tensor,
        *,
        return_hidden: Iterable[int] | None = None,
        force_drop_ids: torch.Tensor | None = None,
    ):
        """`REGOutput(velocity, projections, cls_velocity)`; with `return_hidden=[i, ...]` returns
        `(REGOutput, {i: block_i output (B, 1+N, D)})` (token 0 = class token).

        `x (B, C, H, W)`, `t (B,)` (or 0-d) in [0, 1] with 1 = noise, `y (B,)`, `cls_token (B, z_dim)`.
        """
        depth = self.config.depth
        wanted = set()
        for i in return_hidden or ():
            if not -depth <= i < depth:
                raise ValueError(f"block index {i} out of range for depth {depth}")
            wanted.add(i % depth)
        tokens = self.embed_tokens(x, cls_token)
        B, T, D = tokens.shape
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,) or y.shape != (B,):
            raise ValueError(f"t and y must have shape ({B},), got {tuple(t.shape)} and {tuple(y.shape)}")
        c = self.t_embedder(t) + self.y_embedder(y, force_drop_ids)
        hidden: dict[int, torch.Tensor] = {}
        projections: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, use_reentrant=False)
            else:
                tokens = block(tokens, c)
            if i in wanted:
                hidden[i] = tokens
            if i + 1 == self.config.encoder_depth:
                projections = [proj(tokens) for proj in self.projectors]
        patch_out, cls_velocity = self.final_layer(tokens, c)
        out = REGOutput(unpatchify(patch_out, self.config.patch_size, self.out_channels), projections, cls_velocity)
        return out if return_hidden is None else (out, hidden)

    # ------------------------------------------------------------------ DiffusionNetwork
    # latent_shape, token_grid, num_blocks: `LatentGridMixin`; the state adds the class token
    @property
    def alignment_dim(self) -> int:
        return int(self.config.z_dims[0])

    @property
    def class_token_dim(self) -> int:
        return int(self.config.cls_token_dim)

    def initial_state(self, n: int, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent (n, C, h, w), class token (n, z_dim))`` ~ N(0, I), float32, drawn in that order."""
        x = torch.randn((n, *self.latent_shape), generator=generator, device=device)
        return (x, torch.randn((n, self.class_token_dim), generator=generator, device=device))

    @staticmethod
    def _split(state) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(state, tuple) or len(state) != 2:
            raise ValueError("a REG state is the tuple (latent, class_token)")
        return state

    def velocity(self, state, t: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, cls = self._split(state)
        v, _zs, cls_v = self(x, t, condition, cls)  # the projector outputs only matter to the training loss
        return (v, cls_v)

    def training_state(self, latents: torch.Tensor, alignment) -> TrainingState:
        return vfm_class_token_state(latents, alignment, self.class_token_dim, self.alignment_dim)

    def training_forward(self, state, t: torch.Tensor, condition: torch.Tensor) -> NetworkOutput:
        """A ``(latent, class token)`` state, or the latent alone (alignment off): then a zero class token
        goes in and its velocity is an unused output."""
        if isinstance(state, tuple):
            x, cls = self._split(state)
            out = self(x, t, condition, cls)
            return NetworkOutput((out.velocity, out.cls_velocity), out.projections)
        zeros = state.new_zeros(state.shape[0], self.class_token_dim)
        out = self(state, t, condition, zeros)
        return NetworkOutput(out.velocity, out.projections, [out.cls_velocity])

    def block_features(self, state, t: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official REG extractor (`tools/evaluate_alignment/diffusions/get_block_features_from_reg.py`):
        embedder and block tokens without the class token, projector outputs over all ``1 + N`` tokens,
        `final_layer` = the patch velocity tokens."""
        x, cls = self._split(state)
        depth = len(self.blocks)
        out, hidden = self(x, t, condition, cls, return_hidden=list(range(depth)))
        feats = {"embedder": self.embed_tokens(x, cls)[:, 1:]}
        feats.update({f"block_{i}": hidden[i][:, 1:] for i in range(depth)})
        feats["final_layer"] = out.velocity.flatten(2).transpose(1, 2)
        feats.update({f"projector_{j}": z for j, z in enumerate(out.projections)})
        return feats


def build_sit_reg(preset: str = "SiT-XL/1-REG", *, activation_checkpointing: bool = False, **overrides) -> SiTREG:
    """Build from a named preset (`SIT_REG_PRESETS`), with optional shape overrides."""
    if preset not in SIT_REG_PRESETS:
        raise KeyError(f"unknown REG SiT preset {preset!r}; choose from {sorted(SIT_REG_PRESETS)}")
    return SiTREG(replace(SIT_REG_PRESETS[preset], **overrides), activation_checkpointing=activation_checkpointing)
