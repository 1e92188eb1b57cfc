"""The frozen reference VFM of SE-CKNNA, built the way the official SE-CKNNA extractors run it.

The official extractors (`tools/evaluate_alignment/vfms/extract_features_by_{dinov2,siglip2_large}.py`)
exist for two families:

- DINOv2: timm `vit_*_patch14_dinov2` with `dynamic_img_size=True`, so a position table resampled
  to the 16x16 grid of a 224 px input goes through timm `resample_abs_pos_embed` (bicubic **with**
  antialias). We build the DINOv2 reference with `pos_embed_resize="timm"` whatever the weights'
  format (HF folder or torch.hub `.pth`); the tokenizer's DINOv2, by contrast, keeps the
  transformers rule of the official tokenizer wrapper (`vfmvae.vfm.dinov2`).
- SigLIP2: transformers, position table interpolated as our SigLIP wrapper does.

Both run in float32 (the official extractors use no autocast) (docs/design.md, "SE-CKNNA").
"""

from __future__ import annotations

import os
from typing import Any

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.build import build_vfm
from vfmvae.vfm.config import get_vfm_config

SE_CKNNA_FAMILIES = ("dinov2", "siglip")


def se_cknna_reference_overrides(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `VFMConfig` overrides that make preset `name` an SE-CKNNA reference (after the user's `config`)."""
    family = get_vfm_config(name).family
    if family not in SE_CKNNA_FAMILIES:
        raise ValueError(
            f"SE-CKNNA has official reference pipelines for DINOv2 and SigLIP2 only, not {family!r} ({name})"
        )
    overrides = {"compute_dtype": "float32", **dict(config or {})}
    if family == "dinov2":
        if overrides.get("pos_embed_resize", "timm") != "timm":
            raise ValueError(
                "the SE-CKNNA DINOv2 reference resamples its position table as the official timm extractor does; "
                "drop pos_embed_resize from the reference config"
            )
        overrides["pos_embed_resize"] = "timm"
    return overrides


def build_se_cknna_reference(
    name: str,
    pretrained: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    allow_download: bool = False,
) -> FrozenVFM:
    """`build_vfm(name, pretrained, config)` with the SE-CKNNA protocol's settings (module doc).

    `config`: extra `VFMConfig` overrides (e.g. `{"attn_implementation": "eager"}`); a DINOv2
    `pos_embed_resize` other than "timm" is refused. Returns a frozen, eval-mode float32 VFM.
    """
    return build_vfm(name, pretrained, se_cknna_reference_overrides(name, config), allow_download)


__all__ = ["SE_CKNNA_FAMILIES", "build_se_cknna_reference", "se_cknna_reference_overrides"]
