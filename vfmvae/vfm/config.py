"""Typed configs and named presets for the frozen vision foundation models (VFMs).

Shapes only: which backbone, how wide and deep, which preprocessing it expects. Runtime choices
(resize size/scale, interpolation, which layers) are per call, see `FrozenVFM.forward`.

Paper: VFM-VAE (arXiv 2510.18457) encodes with a frozen SigLIP2-L/16-512 (paper Sec. 3) and compares
frozen EVA-CLIP-L, DINOv2-L and SigLIP2-L tokenizers (the paper's VFM table); the official code also
runs MAE-L/16 and the Qwen2.5-VL vision tower behind the same interface. The projected
discriminator uses a frozen DINO ViT-S/16; REG/REPA alignment and SE-CKNNA use DINOv2-B/L
(docs/design.md, "Frozen networks").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # EVA-CLIP and Qwen2.5-VL (official wrappers)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FAMILIES = ("siglip", "dinov2", "vit", "eva", "mae", "qwen2_5_vl")
BACKENDS = ("hf", "timm")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
POS_EMBED_RESIZES = ("hf", "timm")
# Which backends each family is implemented for.
_FAMILY_BACKENDS = {
    "siglip": ("hf",),
    "dinov2": ("hf", "timm"),
    "vit": ("timm",),
    "eva": ("timm",),
    "mae": ("hf",),
    "qwen2_5_vl": ("hf",),
}


@dataclass(frozen=True)
class VFMConfig:
    """Architecture + preprocessing of one frozen VFM.

    family: "siglip" (SigLIP / SigLIP2 FixRes vision tower, no CLS), "dinov2" (CLS, LayerScale),
        "vit" (plain timm ViT with CLS: DINO ViT-S/16), "eva" (timm EVA-02 CLIP), "mae"
        (transformers ViT-MAE encoder), "qwen2_5_vl" (the Qwen2.5-VL vision tower).
    backend: "hf" = transformers (`save_pretrained` folders); "timm" = a timm model (torch.hub / timm
        `.pth` state dicts, timm `save_for_hf` folders).
    mlp_hidden_size: width of the transformer MLP (SigLIP/MAE/Qwen `intermediate_size`, DINOv2
        `mlp_ratio * hidden`, EVA `int(hidden * 8/3)`, fixed by its timm architecture).
    image_size: native input side (SigLIP2-L: 512; DINOv2: 518; EVA02-L CLIP: 336; MAE-L: 224).
        Qwen2.5-VL has no native size (2-D RoPE); it is the nominal side used by presets.
    image_mean/std: the model's own normalisation, applied to [0, 1] images after the resize.
    interpolation: the official per-VFM resize mode of the *losses* (`VFM2INTERPOLATION`: siglip
        and mae bilinear, dino, eva and qwen bicubic). The tokenizer's own input resize is a
        property of the wrapper class (`FrozenVFM.resize_mode`), because the official EVA wrapper
        resizes bilinearly although the table says bicubic.
    compute_dtype: "float32" runs with autocast disabled; "bfloat16"/"float16" run the backbone
        under `torch.autocast` of that dtype (the official code uses bf16 autocast on CUDA).
        Outputs are always float32, as in the official wrappers.
    keep_head: SigLIP only. The MAP attention-pool head (12.6 M params at L/16) is never used by
        the unconditional tokenizer, so it is dropped unless asked for (parameter counts).
    layerscale_value: DINOv2 LayerScale init (HF `layerscale_value`, timm `init_values`).
    pos_embed_resize: DINOv2 only, how the position table is resampled to another token grid:
        "hf" = transformers `Dinov2Embeddings` (bicubic, no antialias; the official *tokenizer*
        wrapper loads DINOv2 through transformers), "timm" = timm `resample_abs_pos_embed`
        (bicubic with antialias; the official SE-CKNNA extractor loads DINOv2 through timm).
        Independent of the weights' file format (see `vfmvae.vfm.dinov2`).
    timm_arch: timm architecture name used for backend "timm" (kwargs override its shape).
    hub_id: the public hub id, used only when `allow_download=True` and no local file is given.
    extra: additional kwargs for the HF config / `timm.create_model` (e.g. the Qwen2.5-VL
        `out_hidden_size`, `window_size`, `fullatt_block_indexes`).
    """

    family: str
    backend: str
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_hidden_size: int
    patch_size: int
    image_size: int
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    compute_dtype: str = "float32"
    keep_head: bool = False
    layer_norm_eps: float = 1e-6
    layerscale_value: float = 1.0
    hidden_act: str = "gelu"
    pos_embed_resize: str = "hf"
    timm_arch: str | None = None
    hub_id: str | None = None
    attn_implementation: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # extra backbone kwargs

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"VFMConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"VFMConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend not in _FAMILY_BACKENDS[self.family]:
            raise ValueError(
                f"a {self.family!r} VFM is only supported with backend(s) {_FAMILY_BACKENDS[self.family]}, "
                f"got {self.backend!r}"
            )
        if self.backend == "timm" and not self.timm_arch:
            raise ValueError("backend 'timm' needs `timm_arch` (e.g. 'vit_small_patch16_224')")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.pos_embed_resize not in POS_EMBED_RESIZES:
            raise ValueError(f"pos_embed_resize must be one of {POS_EMBED_RESIZES}, got {self.pos_embed_resize!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def has_cls(self) -> bool:
        return self.family not in ("siglip", "qwen2_5_vl")

    def replace(self, **overrides: Any) -> VFMConfig:
        """Copy with `overrides` applied; unknown keys are an error that lists the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise KeyError(f"unknown VFMConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        for key in ("image_mean", "image_std"):
            if key in overrides:
                overrides[key] = tuple(overrides[key])
        return dataclasses.replace(self, **overrides)


def _siglip(**kw: Any) -> VFMConfig:
    base = dict(
        family="siglip",
        backend="hf",
        patch_size=16,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
        interpolation="bilinear",
        hidden_act="gelu_pytorch_tanh",
    )
    return VFMConfig(**{**base, **kw})


def _dinov2(**kw: Any) -> VFMConfig:
    base = dict(family="dinov2", backend="hf", patch_size=14, image_size=518, interpolation="bicubic")
    return VFMConfig(**{**base, **kw})


def _dinov2_timm(**kw: Any) -> VFMConfig:
    # timm inits LayerScale at 1e-5 like the DINOv2 paper; the value is overwritten by real weights.
    return _dinov2(**{"backend": "timm", "layerscale_value": 1e-5, "pos_embed_resize": "timm", **kw})


def _vit(**kw: Any) -> VFMConfig:
    base = dict(
        family="vit",
        backend="timm",
        timm_arch="vit_small_patch16_224",
        patch_size=16,
        image_size=224,
        interpolation="bilinear",
    )
    return VFMConfig(**{**base, **kw})


def _eva(**kw: Any) -> VFMConfig:
    base = dict(
        family="eva",
        backend="timm",
        timm_arch="eva02_large_patch14_clip_336",
        patch_size=14,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        interpolation="bicubic",
    )
    return VFMConfig(**{**base, **kw})


def _mae(**kw: Any) -> VFMConfig:
    # layer_norm_eps: the transformers default that the released `facebook/vit-mae-*` configs carry.
    base = dict(
        family="mae", backend="hf", patch_size=16, image_size=224, interpolation="bilinear", layer_norm_eps=1e-12
    )
    return VFMConfig(**{**base, **kw})


def _qwen(**kw: Any) -> VFMConfig:
    base = dict(
        family="qwen2_5_vl",
        backend="hf",
        patch_size=14,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        interpolation="bicubic",
        hidden_act="silu",
    )
    return VFMConfig(**{**base, **kw})


# Qwen2.5-VL vision tower fields that have no generic VFMConfig counterpart (HF `vision_config`).
_QWEN25_VL_3B_EXTRA = {
    "out_hidden_size": 2048,  # merger output = the 3B language model width (7B: 3584, 72B: 8192)
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}

# Named presets: real models (checked by parameter count on the `meta` device) and tiny debug ones.
VFM_PRESETS: dict[str, VFMConfig] = {
    # The paper's tokenizer encoder. 316,742,656 params with the MAP head.
    "siglip2-large-patch16-512": _siglip(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        mlp_hidden_size=4096,
        image_size=512,
        compute_dtype="bfloat16",
        hub_id="google/siglip2-large-patch16-512",
    ),
    # DINOv2 via transformers `Dinov2Model` (save_pretrained folders, HF hub layout).
    "dinov2-base": _dinov2(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        mlp_hidden_size=3072,
        compute_dtype="bfloat16",
        hub_id="facebook/dinov2-base",
    ),
    "dinov2-large": _dinov2(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        mlp_hidden_size=4096,
        compute_dtype="bfloat16",
        hub_id="facebook/dinov2-large",
    ),
    # DINOv2 in the torch.hub / timm `.pth` format that REG/REPA load (`dinov2_vitb14`).
    "dinov2-vitb14": _dinov2_timm(
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        mlp_hidden_size=3072,
        timm_arch="vit_base_patch14_dinov2",
        hub_id="vit_base_patch14_dinov2.lvd142m",
    ),
    "dinov2-vitl14": _dinov2_timm(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        mlp_hidden_size=4096,
        timm_arch="vit_large_patch14_dinov2",
        hub_id="vit_large_patch14_dinov2.lvd142m",
    ),
    # EVA-02-CLIP-L/14 at 336 px through timm (the paper's EVA-CLIP-L tokenizer); CLIP head dropped.
    "eva02-large-patch14-clip-336": _eva(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        mlp_hidden_size=2730,
        image_size=336,
        compute_dtype="bfloat16",
        hub_id="eva02_large_patch14_clip_336.merged2b_s6b_b61k",
    ),
    # ViT-MAE-L/16 encoder (transformers `ViTMAEModel`, mask ratio forced to 0).
    "mae-large": _mae(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        mlp_hidden_size=4096,
        compute_dtype="bfloat16",
        hub_id="facebook/vit-mae-large",
    ),
    # The same weights at a 512 px native size (32x32 tokens, like SigLIP2 at x2): the tokenizer preset's
    # MAE. Loading the 224 px checkpoint rebuilds the fixed sin-cos table for the 32x32 grid (mae.py).
    "mae-large-512": _mae(
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        mlp_hidden_size=4096,
        image_size=512,
        compute_dtype="bfloat16",
        hub_id="facebook/vit-mae-large",
    ),
    # The Qwen2.5-VL-3B vision tower (transformers `Qwen2_5_VisionTransformerPretrainedModel`).
    "qwen2.5-vl-3b-vision": _qwen(
        hidden_size=1280,
        num_layers=32,
        num_heads=16,
        mlp_hidden_size=3420,
        image_size=448,
        compute_dtype="bfloat16",
        hub_id="Qwen/Qwen2.5-VL-3B-Instruct",
        extra=dict(_QWEN25_VL_3B_EXTRA),
    ),
    # The StyleGAN-T projected discriminator's frozen DINO ViT-S/16 (21,665,664 params, no head).
    "dino-vits16": _vit(
        hidden_size=384, num_layers=12, num_heads=6, mlp_hidden_size=1536, hub_id="vit_small_patch16_224.dino"
    ),
    # Tiny presets for tests. `debug-siglip` equals the SigLIP of `vfmvae_tiny.json`; `debug-dinov2-fixture`,
    # `debug-eva` and `debug-mae` the VFMs of `vfmvae_{dinov2,eva,mae}_tiny.json`.
    "debug-siglip": _siglip(hidden_size=64, num_layers=3, num_heads=4, mlp_hidden_size=128, image_size=128),
    "debug-dinov2": _dinov2(hidden_size=64, num_layers=2, num_heads=4, mlp_hidden_size=256, image_size=56),
    "debug-dinov2-fixture": _dinov2(hidden_size=48, num_layers=3, num_heads=4, mlp_hidden_size=96, image_size=98),
    "debug-dinov2-hub": _dinov2_timm(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        mlp_hidden_size=256,
        image_size=56,
        timm_arch="vit_small_patch14_dinov2",
    ),
    "debug-eva": _eva(hidden_size=48, num_layers=3, num_heads=4, mlp_hidden_size=128, image_size=84),
    "debug-mae": _mae(hidden_size=48, num_layers=3, num_heads=4, mlp_hidden_size=96, image_size=128),
    "debug-qwen2.5-vl": _qwen(
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        mlp_hidden_size=40,
        image_size=112,
        extra={
            "out_hidden_size": 48,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
    ),
    "debug-dino-vits": _vit(hidden_size=64, num_layers=4, num_heads=4, mlp_hidden_size=256),
}


def get_vfm_config(name: str, overrides: dict[str, Any] | None = None) -> VFMConfig:
    """Preset `name` with optional field `overrides` (e.g. `{"compute_dtype": "float32"}`)."""
    if name not in VFM_PRESETS:
        raise KeyError(f"unknown VFM preset {name!r}; available: {sorted(VFM_PRESETS)}")
    cfg = VFM_PRESETS[name]
    return cfg.replace(**dict(overrides)) if overrides else cfg
