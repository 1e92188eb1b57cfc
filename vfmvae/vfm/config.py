"""Typed configs and named presets for the frozen vision foundation models (VFMs).

Shapes only: which backbone, how wide and deep, which preprocessing it expects. Runtime choices
(resize size/scale, interpolation, which layers) are per call, see `FrozenVFM.forward`.

Paper: VFM-VAE (arXiv 2510.18457) encodes with a frozen SigLIP2-L/16-512 (§3, "VFM encoder"); its
projected discriminator uses a frozen DINO ViT-S/16; the diffusion alignment (REPA/REG) and SE-CKNNA
use DINOv2-B/L. Values follow `spec/ecosystem.md` §1 and `spec/tokenizer.md` §1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

FAMILIES = ("siglip", "dinov2", "vit")
BACKENDS = ("hf", "timm")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VFMConfig:
    """Architecture + preprocessing of one frozen VFM.

    family: "siglip" (no CLS token), "dinov2" (CLS token, LayerScale), "vit" (timm ViT with CLS).
    backend: "hf" = transformers (`SiglipVisionModel` / `Dinov2Model`, `save_pretrained` folders);
        "timm" = a timm `VisionTransformer` (torch.hub / timm `.pth` state dicts, DINO ViT-S).
    mlp_hidden_size: width of the transformer MLP (SigLIP `intermediate_size`, DINOv2 4*hidden).
    image_size: native input side (SigLIP2-L: 512; DINOv2 checkpoints: 518; DINO ViT-S: 224).
    image_mean/std: the model's own normalisation, applied to [0, 1] images after the resize.
    interpolation: the official per-VFM resize mode (`VFM2INTERPOLATION`: siglip bilinear,
        dino bicubic); informational default for callers, `forward` takes it explicitly.
    compute_dtype: "float32" runs with autocast disabled; "bfloat16"/"float16" run the backbone
        under `torch.autocast` of that dtype (the official code uses bf16 autocast on CUDA).
        Outputs are always float32, as in the official wrappers.
    keep_head: SigLIP only. The MAP attention-pool head (12.6 M params at L/16) is never used by
        the unconditional tokenizer, so it is dropped unless asked for (parameter counts).
    layerscale_value: DINOv2 LayerScale init (HF `layerscale_value`, timm `init_values`).
    timm_arch: timm architecture name used for backend "timm" (kwargs override its shape).
    hub_id: the public hub id, used only when `allow_download=True` and no local file is given.
    extra: additional kwargs for the HF config / `timm.create_model` (rarely needed).
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
    timm_arch: str | None = None
    hub_id: str | None = None
    attn_implementation: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # extra backbone kwargs

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"VFMConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"VFMConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.family == "siglip" and self.backend != "hf":
            raise ValueError("SigLIP is only supported through transformers (backend='hf')")
        if self.family == "vit" and self.backend != "timm":
            raise ValueError("family 'vit' (DINO ViT-S etc.) is only supported through timm (backend='timm')")
        if self.backend == "timm" and not self.timm_arch:
            raise ValueError("backend 'timm' needs `timm_arch` (e.g. 'vit_small_patch16_224')")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def has_cls(self) -> bool:
        return self.family != "siglip"

    def replace(self, **overrides: Any) -> VFMConfig:
        """Copy with `overrides` applied; unknown keys are an error that lists the valid ones."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise KeyError(f"unknown VFMConfig field(s) {unknown}; valid fields: {sorted(valid)}")
        if "image_mean" in overrides:
            overrides["image_mean"] = tuple(overrides["image_mean"])
        if "image_std" in overrides:
            overrides["image_std"] = tuple(overrides["image_std"])
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
        layer_norm_eps=1e-6,
    )
    return VFMConfig(**{**base, **kw})


def _dinov2(**kw: Any) -> VFMConfig:
    base = dict(
        family="dinov2",
        backend="hf",
        patch_size=14,
        image_size=518,
        interpolation="bicubic",
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )
    return VFMConfig(**{**base, **kw})


def _dinov2_timm(**kw: Any) -> VFMConfig:
    # timm inits LayerScale at 1e-5 like the DINOv2 paper; the value is overwritten by real weights.
    return _dinov2(**{"backend": "timm", "layerscale_value": 1e-5, **kw})


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


# Named presets: real models (checked by parameter count on the `meta` device) and tiny debug ones.
VFM_PRESETS: dict[str, VFMConfig] = {
    # The paper's tokenizer encoder (tokenizer.md §1). 316,742,656 params with the MAP head.
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
    # The StyleGAN-T projected discriminator's frozen DINO ViT-S/16 (21,665,664 params, no head).
    "dino-vits16": _vit(
        hidden_size=384, num_layers=12, num_heads=6, mlp_hidden_size=1536, hub_id="vit_small_patch16_224.dino"
    ),
    # Tiny presets for tests. `debug-siglip` equals the SigLIP of `fixtures/vfmvae_tiny.json`.
    "debug-siglip": _siglip(hidden_size=64, num_layers=3, num_heads=4, mlp_hidden_size=128, image_size=128),
    "debug-dinov2": _dinov2(hidden_size=64, num_layers=2, num_heads=4, mlp_hidden_size=256, image_size=56),
    "debug-dinov2-hub": _dinov2_timm(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        mlp_hidden_size=256,
        image_size=56,
        timm_arch="vit_small_patch14_dinov2",
    ),
    "debug-dino-vits": _vit(hidden_size=64, num_layers=4, num_heads=4, mlp_hidden_size=256),
}


def get_vfm_config(name: str, overrides: dict[str, Any] | None = None) -> VFMConfig:
    """Preset `name` with optional field `overrides` (e.g. `{"compute_dtype": "float32"}`)."""
    if name not in VFM_PRESETS:
        raise KeyError(f"unknown VFM preset {name!r}; available: {sorted(VFM_PRESETS)}")
    cfg = VFM_PRESETS[name]
    return cfg.replace(**dict(overrides)) if overrides else cfg
