"""Typed architecture config of the VFM-VAE tokenizer, with named presets.

Shapes only: runtime knobs (precision, EQ regularisation, loss weights) live elsewhere.
Every field maps onto one official `networks.generator.Generator` kwarg (named in the comment);
`vfmvae.tokenizer.convert.config_from_official` does that translation.

Paper preset = `tianciB/VFM-VAE` stage configs (docs/design.md, "Tokenizer architecture").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

LABEL_TYPES = (None, "text", "cls2text", "cls2id")
TEXT_LABEL_TYPES = ("text", "cls2text")


@dataclass
class VFMVAEConfig:
    # --- frozen VFM ---
    vfm_name: str = "siglip2-large-patch16-512"  # preset key of `vfmvae.vfm.build_vfm`
    vfm_hidden_size: int = 1024  # official patch_in_dimensions (same for every level)
    vfm_patch_size: int = 16
    vfm_scale: float = 2.0  # official scale_factor: images are resized x2 (bilinear) for the VFM
    vfm_layers: tuple[int, ...] = (0, 12, -1)  # official patch_from_layers
    level_dims: tuple[int, ...] = (64, 64, 64)  # official patch_out_dimensions

    # --- latent ---
    img_resolution: int = 256  # native training resolution; other sizes work at run time
    compression: int = 16  # official resolution_compression_factor
    z_dim: int = 32  # official z_dimension
    head_layers: int = 1  # official attnproj_quant_layers
    lift_layers: int = 1  # official attnproj_post_quant_layers
    lift_factor: int = 16  # official decompress_factor: lifted latent has z_dim*16 channels
    use_vf_projection: bool = False  # official use_vf_loss: adds the 1x1 `linear_proj` z -> VFM dim

    # --- mapping network ---
    w_dim: int = 512  # official z_dim_for_mapping_mlp_output (unconditional: w_dim)
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995

    # --- synthesis ---
    num_blocks: int = 6
    channel_base: int = 32768
    channel_max: int = 512
    num_res_blocks: int = 2
    fusion_block_indices: tuple[int, ...] = (0, 1, 2, 3)  # official concat_z_block_indices
    fusion_dims: tuple[int, ...] = (512, 256, 128, 128)  # official concat_z_mapped_dims
    fusion_activation: str = "lrelu"  # official activation_for_concat_z
    attn_block_indices: tuple[int, ...] = (0, 1, 2)
    attn_depths: tuple[int, ...] = (2, 2, 2)
    attn_heads: int = 8
    attn_ff_mult: int = 4
    extra_convnext: bool = True  # official add_additional_convnext: 3 (not 2) layers per res block in blocks 0-3
    # official use_convnext; False = the ablation's baseline layers, StyleGAN2 modulated 3x3 convs
    # (docs/analyses.md, "Component ablation")
    use_convnext: bool = True
    use_blur: bool = True  # official use_gaussian_blur
    legacy: bool = (
        True  # static noise maps; needed for the released weights (docs/design.md, "Deviations from the official code")
    )
    img_channels: int = 3

    # --- conditioning (docs/conditional.md); official conditional / label_type / label_dim / use_cross_attn ---
    label_type: str | None = None  # None = unconditional (conditional=False), "text", "cls2text" or "cls2id"
    text_encoder: str = "siglip2-large-patch16-512"  # text tower preset (`vfmvae.vfm.siglip2_text.TEXT_PRESETS`)
    text_dim: int = 1024  # text tower width: cross-attention context and pooled embedding (official c_dim)
    text_max_length: int = 64  # official tokenizer max_length (padding="max_length")
    cross_attention: bool = False  # official use_cross_attn: attend to the text tokens after the self-attention
    num_classes: int = 1000  # official label_dim (cls2id)
    class_embed_dim: int = 1024  # official c_embed_dim (cls2id class embedding)

    def __post_init__(self) -> None:
        self.vfm_layers = tuple(self.vfm_layers)
        self.level_dims = tuple(self.level_dims)
        self.fusion_block_indices = tuple(self.fusion_block_indices)
        self.fusion_dims = tuple(self.fusion_dims)
        self.attn_block_indices = tuple(self.attn_block_indices)
        self.attn_depths = tuple(self.attn_depths)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"VFMVAEConfig: {msg}")

        need(
            len(self.vfm_layers) == len(self.level_dims) > 0,
            f"vfm_layers {self.vfm_layers} and level_dims {self.level_dims} must have the same non-zero length",
        )
        need(
            all(self.vfm_hidden_size % d == 0 for d in self.level_dims),
            f"every level_dims entry must divide vfm_hidden_size={self.vfm_hidden_size} (head-averaging)",
        )
        need(
            self.img_resolution % self.compression == 0,
            f"img_resolution={self.img_resolution} must be divisible by compression={self.compression}",
        )
        tokens = self.img_resolution * self.vfm_scale / self.vfm_patch_size
        need(
            tokens == int(tokens) and int(tokens) % self.z_resolution == 0,
            f"VFM token grid {tokens} (img_resolution*vfm_scale/patch) must be a multiple of the latent grid "
            f"{self.z_resolution}",
        )
        need(
            self.img_resolution % (2 ** (self.num_blocks - 1)) == 0,
            f"img_resolution={self.img_resolution} must be divisible by 2**(num_blocks-1)",
        )
        need(
            0 in self.fusion_block_indices,
            "fusion_block_indices must contain 0: the Fourier-feature start of the official code "
            "(no latent at block 0) is not implemented",
        )
        need(
            len(self.fusion_dims) >= max(self.fusion_block_indices) + 1,
            f"fusion_dims {self.fusion_dims} must have an entry for every block index up to "
            f"{max(self.fusion_block_indices)} (indexed by block, as the official concat_z_mapped_dims)",
        )
        need(
            all(0 <= i < self.num_blocks for i in self.fusion_block_indices + self.attn_block_indices),
            "fusion/attention block indices must lie in [0, num_blocks)",
        )
        need(
            len(self.attn_block_indices) == len(self.attn_depths),
            "attn_block_indices and attn_depths must have the same length",
        )
        need(
            self.fusion_activation in ("lrelu", "silu", "gelu"),
            f"fusion_activation must be lrelu, silu or gelu, got {self.fusion_activation!r}",
        )
        need(
            self.label_type in LABEL_TYPES,
            f"label_type must be None (unconditional), 'text', 'cls2text' or 'cls2id', got {self.label_type!r}",
        )
        need(
            not self.cross_attention or self.label_type in TEXT_LABEL_TYPES,
            "cross_attention needs text tokens: label_type 'text' or 'cls2text'",
        )
        need(self.label_type != "cls2id" or self.num_classes > 0, "cls2id needs num_classes > 0")
        for i in self.attn_block_indices:
            need(
                self.block_channels[i] % self.attn_heads == 0,
                f"channels {self.block_channels[i]} of attention block {i} not divisible by attn_heads={self.attn_heads}",
            )

    # ------------------------------------------------------------------ derived
    @property
    def z_resolution(self) -> int:
        """Latent side at `img_resolution` (16 at 256 px)."""
        return self.img_resolution // self.compression

    @property
    def token_resolution(self) -> int:
        """VFM token grid side at `img_resolution` (32 at 256 px x2 / patch 16)."""
        return int(self.img_resolution * self.vfm_scale) // self.vfm_patch_size

    @property
    def space_to_depth(self) -> int:
        """Token space-to-depth factor (2 in the paper); fixed at build time, valid at any input size."""
        return self.token_resolution // self.z_resolution

    @property
    def lifted_dim(self) -> int:
        """Channels of the lifted latent (512 in the paper)."""
        return self.z_dim * self.lift_factor

    @property
    def block_resolutions(self) -> list[int]:
        """Output side of each synthesis block at `img_resolution` ([8..256] in the paper)."""
        start = self.img_resolution // 2 ** (self.num_blocks - 1)
        return [start * 2**i for i in range(self.num_blocks)]

    @property
    def block_channels(self) -> list[int]:
        """Channels per block; the official rule normalises resolutions to a 256-px scale."""
        scale = self.img_resolution / 256
        return [min(self.channel_base // int(res / scale), self.channel_max) for res in self.block_resolutions]

    def convnext_layers(self, block: int) -> int:
        """Style-modulated layers in one block: conv0 + num_res_blocks x (3 if block <= 3 and extra else 2);
        the extra layers exist only with ConvNeXt layers (official `add_additional_convnext`)."""
        per = 3 if (block <= 3 and self.extra_convnext and self.use_convnext) else 2
        return 1 + self.num_res_blocks * per

    @property
    def num_ws(self) -> int:
        """Style slots: one per ConvNeXt layer + one ToRGB per block (44 in the paper)."""
        return sum(self.convnext_layers(i) + 1 for i in range(self.num_blocks))

    @property
    def style_dim(self) -> int:
        """Width of the style vector every modulated layer reads: w_dim, plus the pooled text embedding in the
        text modes (official w_dim = z_dim_for_mapping_mlp_output + c_dim)."""
        return self.w_dim + (self.text_dim if self.label_type in TEXT_LABEL_TYPES else 0)

    @property
    def uses_text(self) -> bool:
        """Text tower needed ("text": prompts, "cls2text": class names)."""
        return self.label_type in TEXT_LABEL_TYPES

    def attn_depth(self, block: int) -> int:
        if block in self.attn_block_indices:
            return self.attn_depths[self.attn_block_indices.index(block)]
        return 0

    def to_dict(self) -> dict:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict) -> VFMVAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"VFMVAEConfig: unknown fields {unknown}")
        return cls(**d)


def _debug() -> VFMVAEConfig:
    """Tiny config mirroring the `vfmvae_tiny` fixture topology: 64 px, tiny SigLIP, 8x4x4 latent."""
    return VFMVAEConfig(
        vfm_name="debug-siglip",
        vfm_hidden_size=64,
        vfm_patch_size=16,
        vfm_layers=(0, 2, -1),
        level_dims=(8, 8, 8),
        img_resolution=64,
        z_dim=8,
        w_dim=32,
        channel_base=1024,
        channel_max=16,
        num_res_blocks=1,
        fusion_dims=(16, 8, 4, 4),
    )


def _family(vfm_name: str, patch: int, scale: float, layers: tuple[int, ...], hidden: int = 1024) -> VFMVAEConfig:
    """The paper's f16d32 tokenizer on another frozen VFM (paper's VFM table): same head and decoder widths.

    The VFM input is resized so that its token grid is 32x32 at 256 px (as SigLIP2-L/16 at x2), so the
    head's space-to-depth stays 2. `legacy=False`: no static noise maps, the official recommendation for
    new training (the released SigLIP2 weights alone need `legacy=True`).
    """
    return VFMVAEConfig(
        vfm_name=vfm_name,
        vfm_hidden_size=hidden,
        vfm_patch_size=patch,
        vfm_scale=scale,
        vfm_layers=layers,
        legacy=False,
    )


def _conditional(base: VFMVAEConfig, label_type: str, **kw) -> VFMVAEConfig:
    """A conditional decoder on `base` (docs/conditional.md): text modes attend to the text tokens."""
    return dataclasses.replace(base, label_type=label_type, cross_attention=label_type in TEXT_LABEL_TYPES, **kw)


_DEBUG_TEXT = dict(text_encoder="debug-siglip-text", text_dim=32)

PRESETS: dict[str, VFMVAEConfig] = {
    "vfmvae-f16d32-siglip2": VFMVAEConfig(),  # the paper's tokenizer (released weights: legacy decoder)
    "vfmvae-f16d32-siglip2-large": VFMVAEConfig(),  # the same, named like the other families
    # DINOv2-L/14 at 448 px (native 518: the position table is resampled, transformers rule).
    "vfmvae-f16d32-dinov2-large": _family("dinov2-large", 14, 1.75, (0, 12, -1)),
    # EVA-02-CLIP-L/14 at 448 px (native 336); -1 is its last block without the final norm (official).
    "vfmvae-f16d32-eva02-large": _family("eva02-large-patch14-clip-336", 14, 1.75, (0, 12, -1)),
    # MAE-L/16 at 512 px, its native size in this preset (MAE cannot change resolution at run time).
    "vfmvae-f16d32-mae-large": _family("mae-large-512", 16, 2.0, (0, 12, -1)),
    # Qwen2.5-VL-3B vision tower at 448 px: block outputs (1280 wide, 14 px grid); the merged output
    # (-1, 2048 wide, 28 px grid) cannot share the head with them.
    "vfmvae-f16d32-qwen2.5-vl": _family("qwen2.5-vl-3b-vision", 14, 1.75, (0, 16, -2), hidden=1280),
    "debug": _debug(),
    # Conditional decoders (official conditional=True): SigLIP2 text tower for prompts / class names,
    # or a learned class embedding (cls2id). New training: legacy=False.
    "vfmvae-f16d32-siglip2-text": _conditional(VFMVAEConfig(legacy=False), "text"),
    "vfmvae-f16d32-siglip2-cls2text": _conditional(VFMVAEConfig(legacy=False), "cls2text"),
    "vfmvae-f16d32-siglip2-cls2id": _conditional(VFMVAEConfig(legacy=False), "cls2id"),
    "debug-text": _conditional(_debug(), "text", legacy=False, **_DEBUG_TEXT),
    "debug-cls2text": _conditional(_debug(), "cls2text", legacy=False, **_DEBUG_TEXT),
    "debug-cls2id": _conditional(_debug(), "cls2id", legacy=False, num_classes=16, class_embed_dim=32),
}


def get_config(name: str, **overrides) -> VFMVAEConfig:
    """A fresh copy of preset `name` with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown tokenizer preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


__all__ = ["LABEL_TYPES", "PRESETS", "TEXT_LABEL_TYPES", "VFMVAEConfig", "get_config"]
