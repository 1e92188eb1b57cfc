"""Text-conditioned DiT on VFM-VAE latents, the ``text_dit`` family (paper: the BLIP3-o text-to-image
experiment with VFM-VAE as tokenizer; docs/text_to_image.md, "The network").

LightningDiT (SwiGLU, RMSNorm, QK-RMSNorm, 2-D RoPE, sin-cos positions, adaLN-Zero) with a
cross-attention layer in every block (`TextDiTBlock`). The condition is text (`vfmvae.text.TextCondition`):
prompt ids ``(B, L)`` go through the text encoder inside the network (BLIP3-o query tokens through a
frozen causal LM, or SigLIP2's text tower), whose features ``(B, L_t, D_t)`` are projected to the
context ``(B, L_t, D)`` (`ContextEmbedder`); stored features from the latent cache can be given instead of
ids when the encoder has no trained part. The timestep embedding plus (``pooled_condition``) a linear map of
the mean context token drive adaLN. Null-prompt dropout (``text_dropout_prob``) replaces a training
sample's prompt by the null prompt, for classifier-free guidance.

Time convention: t = 1 is data (LightningDiT's, docs/design.md, "Time conventions"); paper sampler:
``lightningdit-cfg-allchannels`` (Euler ODE, 250 points, shift 0.3, CFG on every channel). Optional REPA
projector (``repa_encoder_depth``) for the joint-alignment callback, as `LightningDiTREPA`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vfmvae.dit.interface import NetworkOutput, SamplerPresets, TrainingState, vfm_class_token_state
from vfmvae.dit.latent_grid import LatentGridMixin, LightningDiTShape
from vfmvae.dit.layers import PatchEmbed, TimestepEmbedder, unpatchify
from vfmvae.dit.lightningdit import LightningDiTFinalLayer
from vfmvae.dit.pos_embed import AxialRoPE2d, sincos_2d_pos_embed
from vfmvae.dit.registry import NetworkFamily, register_network
from vfmvae.dit.sit_reg import build_projector
from vfmvae.dit.text_dit_layers import ContextEmbedder, TextDiTBlock
from vfmvae.text.condition import DEFAULT_GRID_PROMPTS, TextCondition
from vfmvae.text.encoders import build_text_encoder
from vfmvae.transport.paths import TimeConvention

__all__ = ["TEXT_DIT_PRESETS", "TextDiT", "TextDiTConfig", "build_text_dit"]


@dataclass(frozen=True)
class TextDiTConfig(LightningDiTShape):
    """Shapes of the DiT (LightningDiT's fields) and of its text path. Defaults: XL/1 on 32x16x16 latents
    with 64 query tokens through a causal LM."""

    input_size: int = 16
    patch_size: int = 1
    in_channels: int = 32
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    use_qknorm: bool = True
    use_swiglu: bool = True
    use_rope: bool = True
    use_rmsnorm: bool = True
    wo_shift: bool = False
    learn_sigma: bool = False
    # Text path.
    text_encoder: str = "causal_lm"  # or "siglip_text"
    text_encoder_path: str | None = None  # local save_pretrained folder (model + tokenizer); None = random preset
    text_encoder_preset: str = "debug"
    text_encoder_dtype: str = "float32"
    allow_random_text_encoder: bool = False
    num_queries: int = 64
    kv_cache: bool = True
    text_max_length: int = 128  # prompt tokens kept (SigLIP: at most its 64 positions)
    text_dropout_prob: float = 0.1  # null-prompt dropout for classifier-free guidance
    pooled_condition: bool = True
    sample_prompts: tuple[str, ...] = field(default=DEFAULT_GRID_PROMPTS)

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextDiTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.input_size % self.patch_size or self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError("input_size must divide by patch_size, hidden_size by num_heads and by 4")
        if self.use_rope and self.head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if not 0.0 <= self.text_dropout_prob < 1.0:
            raise ValueError(f"text_dropout_prob must be in [0, 1), got {self.text_dropout_prob}")


TEXT_DIT_PRESETS: dict[str, TextDiTConfig] = {
    "TextDiT-B/1": TextDiTConfig(depth=12, hidden_size=768, num_heads=12),
    "TextDiT-L/1": TextDiTConfig(depth=24, hidden_size=1024, num_heads=16),
    "TextDiT-XL/1": TextDiTConfig(),
    "debug": TextDiTConfig(
        input_size=8, in_channels=8, hidden_size=64, depth=2, num_heads=4, num_queries=4, text_max_length=16
    ),
}


class TextDiT(LatentGridMixin, nn.Module):
    """Velocity network ``v(x, t, text)``: ``x (B, C, H, W)``, ``t (B,)`` (1 = data), ``text`` ids ``(B, L)``
    int64 or stored features ``(B, L_t, D_t)``. Implements `vfmvae.dit.interface.DiffusionNetwork`."""

    time_convention = TimeConvention.DATA_AT_ONE
    sampler_presets = SamplerPresets(default="lightningdit-cfg-allchannels", no_cfg="lightningdit")
    class_token_dim: int | None = None
    fsdp_forward_methods: tuple[str, ...] = ()

    def __init__(
        self,
        config: TextDiTConfig,
        *,
        activation_checkpointing: bool = False,
        repa_encoder_depth: int | None = None,
        repa_projector_dim: int = 2048,
        repa_z_dim: int = 768,
    ) -> None:
        super().__init__()
        self.config = cfg = config
        self.activation_checkpointing = activation_checkpointing
        D = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.input_size, cfg.patch_size, cfg.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.register_buffer("pos_embed", sincos_2d_pos_embed(D, cfg.grid_size)[None], persistent=False)
        self.feat_rope = AxialRoPE2d(cfg.head_dim, cfg.grid_size) if cfg.use_rope else None
        self.blocks = nn.ModuleList(TextDiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = LightningDiTFinalLayer(cfg)
        self.text_encoder, tokenizer = build_text_encoder(
            cfg.text_encoder,
            cfg.text_encoder_path,
            cfg.text_encoder_preset,
            num_queries=cfg.num_queries,
            kv_cache=cfg.kv_cache,
            dtype=cfg.text_encoder_dtype,
            allow_random=cfg.allow_random_text_encoder,
        )
        self.context_embedder = ContextEmbedder(self.text_encoder.feature_dim, D)
        self.pooled_embedder = nn.Linear(D, D) if cfg.pooled_condition else None
        self.condition = TextCondition(tokenizer, cfg.text_max_length, cfg.sample_prompts)
        self.encoder_depth = repa_encoder_depth
        if repa_encoder_depth is not None and not 1 <= repa_encoder_depth <= cfg.depth:
            raise ValueError(f"repa_encoder_depth must be in [1, depth={cfg.depth}], got {repa_encoder_depth}")
        self.projectors = nn.ModuleList(
            [build_projector(D, repa_projector_dim, repa_z_dim)] if repa_encoder_depth is not None else []
        )
        self.alignment_dim = repa_z_dim if repa_encoder_depth is not None else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """LightningDiT's init on the DiT parts (xavier linears, zero bias, N(0, 0.02) time MLP, zero
        adaLN and head) plus zero cross-attention outputs; the text encoder keeps its own weights."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("text_encoder."):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [b.adaLN_modulation[-1] for b in self.blocks] + [b.cross_attn.proj for b in self.blocks]
        for layer in zero + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def reset_buffers(self) -> None:
        """Recompute the fixed tables (after `to_empty()` of a `meta`-device model)."""
        self.pos_embed = sincos_2d_pos_embed(self.config.hidden_size, self.config.grid_size)[None].to(
            self.pos_embed.device
        )
        if self.feat_rope is not None:
            self.feat_rope.reset_buffers()

    def compile_blocks(self, **compile_kwargs) -> None:
        for block in self.blocks:
            block.compile(**compile_kwargs)

    # ------------------------------------------------------------------ conditioning
    def drop_prompts(self, text: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """``text`` with the rows where ``drop (B,)`` is True replaced by the null prompt."""
        null = self.condition.null_like(text)
        return torch.where(drop.view(-1, *([1] * (text.ndim - 1))), null, text)

    def text_features(self, text: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, L)`` -> encoder features; stored features ``(B, L_t, D_t)`` pass through (checked)."""
        if text.dtype == torch.long:
            return self.text_encoder(text)
        if getattr(self.text_encoder, "trainable_outputs", True):
            raise ValueError(
                "stored text features were given, but this network's text encoder has trained parts "
                "(query tokens): give prompt ids, or store features only for the siglip_text encoder"
            )
        if text.ndim != 3 or text.shape[-1] != self.text_encoder.feature_dim:
            raise ValueError(
                f"stored text features must be (B, L, {self.text_encoder.feature_dim}), got {tuple(text.shape)}"
            )
        return text.float()

    def embed_condition(self, t: torch.Tensor, text: torch.Tensor, batch: int, force_drop_ids=None):
        """``(c (B, D), context (B, L_t, D))``; null-prompt dropout in training (``force_drop_ids`` overrides)."""
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,) or text.shape[0] != batch:
            raise ValueError(f"t and the text condition need batch {batch}, got {tuple(t.shape)}, {tuple(text.shape)}")
        if force_drop_ids is not None:
            text = self.drop_prompts(text, force_drop_ids == 1)
        elif self.training and self.config.text_dropout_prob > 0:
            text = self.drop_prompts(text, torch.rand(batch, device=text.device) < self.config.text_dropout_prob)
        context = self.context_embedder(self.text_features(text).to(self.context_embedder.fc1.weight.dtype))
        c = self.t_embedder(t)
        if self.pooled_embedder is not None:
            c = c + self.pooled_embedder(context.mean(dim=1))
        return c, context

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, N, D)``: patch embedding plus sin-cos position (SE-CKNNA ``embedder``)."""
        return self.x_embedder(x) + self.pos_embed.to(x.dtype)

    def forward(self, x, t, text, *, return_hidden: Iterable[int] | None = None, force_drop_ids=None):
        """Velocity ``(B, C, H, W)``; with ``return_hidden=[i, ...]`` also ``{i: block_i output (B, N, D)}``."""
        depth = len(self.blocks)
        wanted = {i % depth for i in (return_hidden or ())}
        tokens = self.embed_tokens(x)
        c, context = self.embed_condition(t, text, x.shape[0], force_drop_ids)
        hidden: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, self.feat_rope, context, use_reentrant=False)
            else:
                tokens = block(tokens, c, self.feat_rope, context)
            if i in wanted:
                hidden[i] = tokens
        out = unpatchify(self.final_layer(tokens, c), self.config.patch_size, self.config.out_channels)
        if self.config.learn_sigma:
            out = out.chunk(2, dim=1)[0]
        return out if return_hidden is None else (out, hidden)

    # ------------------------------------------------------------------ DiffusionNetwork
    # latent_shape, token_grid, num_blocks, initial_state, velocity: `LatentGridMixin`
    def training_state(self, latents: torch.Tensor, alignment: Mapping[str, Any] | None) -> TrainingState:
        return vfm_class_token_state(latents, alignment, None, self.alignment_dim)

    def training_forward(self, state: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> NetworkOutput:
        if self.encoder_depth is None:
            return NetworkOutput(self(state, t, condition))
        velocity, hidden = self(state, t, condition, return_hidden=[self.encoder_depth - 1])
        return NetworkOutput(velocity, [proj(hidden[self.encoder_depth - 1]) for proj in self.projectors])

    def block_features(self, state: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedder``, ``block_i``, ``final_layer`` and (with REPA) ``projector_0`` tokens ``(B, N, D)``."""
        depth = len(self.blocks)
        v, hidden = self(state, t, condition, return_hidden=list(range(depth)))
        feats = {"embedder": self.embed_tokens(state)}
        feats.update({f"block_{i}": hidden[i] for i in range(depth)})
        feats["final_layer"] = v.flatten(2).transpose(1, 2)
        for j, proj in enumerate(self.projectors):
            feats[f"projector_{j}"] = proj(hidden[self.encoder_depth - 1])
        return feats


def build_text_dit(
    preset: str = "TextDiT-XL/1",
    overrides: Mapping[str, Any] | None = None,
    *,
    activation_checkpointing: bool = False,
    repa_encoder_depth: int | None = None,
    repa_projector_dim: int = 2048,
    repa_z_dim: int = 768,
) -> TextDiT:
    """The ``text_dit`` family builder (``overrides``: `TextDiTConfig` fields, text path included)."""
    if preset not in TEXT_DIT_PRESETS:
        raise ValueError(f"unknown text_dit preset {preset!r}; choose one of {sorted(TEXT_DIT_PRESETS)}")
    fields = dict(overrides or {})
    unknown = sorted(set(fields) - set(TextDiTConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"unknown text_dit network_overrides {unknown}; fields: {sorted(TextDiTConfig.__dataclass_fields__)}"
        )
    if "sample_prompts" in fields:
        fields["sample_prompts"] = tuple(fields["sample_prompts"])
    if fields.get("text_encoder_path") is not None:
        fields["text_encoder_path"] = str(fields["text_encoder_path"])
    return TextDiT(
        replace(TEXT_DIT_PRESETS[preset], **fields),
        activation_checkpointing=activation_checkpointing,
        repa_encoder_depth=repa_encoder_depth,
        repa_projector_dim=repa_projector_dim,
        repa_z_dim=repa_z_dim,
    )


TEXT_DIT_FAMILY = register_network(
    NetworkFamily(name="text_dit", presets=TEXT_DIT_PRESETS, default_preset="TextDiT-XL/1", build=build_text_dit)
)
