"""Tokenizer discriminators (docs/design.md, "Tokenizer stages and losses"): StyleGAN-T projected D on DINO, PatchGAN, DiffAugment."""

from .diffaug import diff_augment
from .norms import BatchNormLocal, BatchNormLocal2d
from .patchgan import PATCHGAN_PRESETS, MultiScalePatchGAN, NLayerPatchGAN, PatchGANConfig
from .projected import (
    PROJECTED_DISCRIMINATOR_PRESETS,
    DinoTaps,
    DiscriminatorHead,
    ProjectedDiscriminator,
    ProjectedDiscriminatorConfig,
    build_dino_vit,
    build_heads,
)

__all__ = [
    "PATCHGAN_PRESETS",
    "PROJECTED_DISCRIMINATOR_PRESETS",
    "BatchNormLocal",
    "BatchNormLocal2d",
    "DinoTaps",
    "DiscriminatorHead",
    "MultiScalePatchGAN",
    "NLayerPatchGAN",
    "PatchGANConfig",
    "ProjectedDiscriminator",
    "ProjectedDiscriminatorConfig",
    "build_dino_vit",
    "build_heads",
    "diff_augment",
]
