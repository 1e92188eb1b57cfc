"""The one place frozen VFMs are built: preset -> random init, local folder/file, or (opt-in) hub.

`build_vfm(name, pretrained=None, config=None, allow_download=False)`:
- `name`: a key of `VFM_PRESETS` (e.g. "siglip2-large-patch16-512", "dinov2-base", "dino-vits16",
  "debug-siglip").
- `pretrained`: None = random weights from the preset config (tests, meta-device counts); a local
  folder = transformers `save_pretrained` layout; a local file (`.pth`/`.pt`/`.bin`/`.safetensors`) =
  torch.hub/timm state dict. A DINOv2 preset switches to the timm backend for a file and to the
  transformers backend for a folder, so "dinov2-base" accepts both REG's `.pth` and HF folders.
- `allow_download`: a non-local `pretrained` (or `"hub"` = the preset's `hub_id`) is fetched only
  when True; otherwise it is an error (no silent network access, ecosystem.md §1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import VFMConfig, get_vfm_config
from vfmvae.vfm.hf import HFDinov2VFM, SiglipVFM
from vfmvae.vfm.timm_vit import TimmViTVFM

_DINOV2_TIMM_ARCH = {768: "vit_base_patch14_dinov2", 1024: "vit_large_patch14_dinov2", 384: "vit_small_patch14_dinov2"}


def vfm_from_config(cfg: VFMConfig) -> FrozenVFM:
    """Random-init wrapper for `cfg` (works under `torch.device("meta")`)."""
    if cfg.backend == "timm":
        return TimmViTVFM.from_config(cfg)
    return SiglipVFM.from_config(cfg) if cfg.family == "siglip" else HFDinov2VFM.from_config(cfg)


def _with_backend(cfg: VFMConfig, backend: str) -> VFMConfig:
    """Switch a DINOv2 config between transformers and timm (same weights, two file formats)."""
    if cfg.backend == backend:
        return cfg
    if cfg.family != "dinov2":
        raise ValueError(
            f"a {cfg.family} VFM is only loadable with backend {cfg.backend!r}; "
            f"got a {'folder' if backend == 'hf' else 'file'} for it"
        )
    if backend == "timm":
        arch = cfg.timm_arch or _DINOV2_TIMM_ARCH.get(cfg.hidden_size, "vit_base_patch14_dinov2")
        return cfg.replace(backend="timm", timm_arch=arch)
    return cfg.replace(backend="hf")


def _load_local(cfg: VFMConfig, path: Path) -> FrozenVFM:
    if path.is_dir():
        cfg = _with_backend(cfg, "hf")
        loader = SiglipVFM if cfg.family == "siglip" else HFDinov2VFM
        return loader.from_pretrained(str(path), cfg, allow_download=False)
    return TimmViTVFM.from_file(path, _with_backend(cfg, "timm"))


def _load_remote(cfg: VFMConfig, hub_id: str) -> FrozenVFM:
    if cfg.backend == "timm":
        return TimmViTVFM.from_hub(hub_id, cfg)
    loader = SiglipVFM if cfg.family == "siglip" else HFDinov2VFM
    return loader.from_pretrained(hub_id, cfg, allow_download=True)


def build_vfm(
    name: str,
    pretrained: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    allow_download: bool = False,
) -> FrozenVFM:
    """Build the frozen VFM preset `name` (see module doc). Returns a frozen, eval-mode `FrozenVFM`."""
    cfg = get_vfm_config(name, config)
    if pretrained is None:
        return vfm_from_config(cfg)
    path = Path(os.path.expanduser(str(pretrained)))
    if path.exists():
        return _load_local(cfg, path)
    if not allow_download:
        raise FileNotFoundError(
            f"VFM weights {str(pretrained)!r} not found locally. Pass a local folder (transformers "
            f"save_pretrained) or file (.pth/.safetensors), or set allow_download=True to fetch a hub id "
            f"(preset {name!r}: {cfg.hub_id!r})."
        )
    hub_id = cfg.hub_id if str(pretrained) == "hub" else str(pretrained)
    if not hub_id:
        raise ValueError(f"preset {name!r} has no hub id; pass one as `pretrained`")
    return _load_remote(cfg, hub_id)
