"""Frozen vision foundation models behind one wrapper contract.

Families (one file each): SigLIP/SigLIP2 (`siglip.py`), DINOv2 through transformers or timm
(`dinov2.py`), EVA-02 CLIP (`eva.py`), MAE (`mae.py`), the Qwen2.5-VL vision tower
(`qwen2_5_vl.py`) and plain timm ViTs such as DINO ViT-S/16 (`timm_vit.py`); the contract is
`base.FrozenVFM`, the presets `config.VFM_PRESETS`.

Entry points: `build_vfm(name, pretrained=None, config=None, allow_download=False)`,
`FrozenVFM.forward(images, layers, size=, scale=, interpolation=, antialias=, return_cls=)`,
`build_se_cknna_reference(name, pretrained=None, config=None)`, `check_equivariance_supported`,
and for official checkpoints `vfm_from_official_config` / `vfm_from_hf_config` +
`load_official_vfm_state_dict`.
"""

from vfmvae.vfm.base import FrozenVFM, resize_images, resolve_layer
from vfmvae.vfm.build import build_vfm, vfm_from_config, wrapper_class
from vfmvae.vfm.capabilities import check_equivariance_supported, check_layers_share_grid
from vfmvae.vfm.config import VFM_PRESETS, VFMConfig, get_vfm_config
from vfmvae.vfm.dinov2 import HFDinov2VFM, TimmDinov2VFM, resample_position_table
from vfmvae.vfm.eva import EVAVFM
from vfmvae.vfm.mae import MAEVFM
from vfmvae.vfm.official import (
    FAMILY_OF,
    FAMILY_PRESET,
    IGNORED_OFFICIAL_VFM_KEYS,
    OFFICIAL_FAMILIES,
    family_of_config,
    load_official_vfm_state_dict,
    map_official_vfm_state_dict,
    official_family,
    official_patch_size,
    vfm_config_from_official,
    vfm_from_hf_config,
    vfm_from_official_config,
)
from vfmvae.vfm.qwen2_5_vl import Qwen25VLVisionVFM
from vfmvae.vfm.se_cknna_reference import build_se_cknna_reference
from vfmvae.vfm.siglip import SiglipVFM
from vfmvae.vfm.timm_vit import TimmViTVFM

__all__ = [
    "EVAVFM",
    "FAMILY_OF",
    "FAMILY_PRESET",
    "FrozenVFM",
    "HFDinov2VFM",
    "IGNORED_OFFICIAL_VFM_KEYS",
    "MAEVFM",
    "OFFICIAL_FAMILIES",
    "Qwen25VLVisionVFM",
    "SiglipVFM",
    "TimmDinov2VFM",
    "TimmViTVFM",
    "VFMConfig",
    "VFM_PRESETS",
    "build_se_cknna_reference",
    "build_vfm",
    "check_equivariance_supported",
    "check_layers_share_grid",
    "family_of_config",
    "get_vfm_config",
    "load_official_vfm_state_dict",
    "map_official_vfm_state_dict",
    "official_family",
    "official_patch_size",
    "resample_position_table",
    "resize_images",
    "resolve_layer",
    "vfm_config_from_official",
    "vfm_from_config",
    "vfm_from_hf_config",
    "vfm_from_official_config",
    "wrapper_class",
]
