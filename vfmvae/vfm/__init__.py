"""Frozen vision foundation models (SigLIP2, DINOv2, DINO ViT-S) behind one wrapper contract.

Entry points: `build_vfm(name, pretrained=None, config=None, allow_download=False)`,
`FrozenVFM.forward(images, layers, size=, scale=, interpolation=, antialias=, return_cls=)`,
`VFM_PRESETS`, and for official checkpoints `vfm_from_hf_config` + `load_official_vfm_state_dict`.
"""

from vfmvae.vfm.base import FrozenVFM, resize_images, resolve_layer
from vfmvae.vfm.build import build_vfm, vfm_from_config
from vfmvae.vfm.config import VFM_PRESETS, VFMConfig, get_vfm_config
from vfmvae.vfm.hf import HFDinov2VFM, SiglipVFM
from vfmvae.vfm.official import (
    IGNORED_OFFICIAL_VFM_KEYS,
    load_official_vfm_state_dict,
    map_official_vfm_state_dict,
    vfm_from_hf_config,
)
from vfmvae.vfm.timm_vit import TimmViTVFM

__all__ = [
    "FrozenVFM",
    "HFDinov2VFM",
    "IGNORED_OFFICIAL_VFM_KEYS",
    "SiglipVFM",
    "TimmViTVFM",
    "VFMConfig",
    "VFM_PRESETS",
    "build_vfm",
    "get_vfm_config",
    "load_official_vfm_state_dict",
    "map_official_vfm_state_dict",
    "resize_images",
    "resolve_layer",
    "vfm_from_config",
    "vfm_from_hf_config",
]
