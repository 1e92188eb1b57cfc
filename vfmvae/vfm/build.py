"""The one place frozen VFMs are built: preset -> random init, local folder/file, or (opt-in) hub.

`build_vfm(name, pretrained=None, config=None, allow_download=False)`:
- `name`: a key of `VFM_PRESETS` (e.g. "siglip2-large-patch16-512", "dinov2-large",
  "eva02-large-patch14-clip-336", "mae-large", "qwen2.5-vl-3b-vision", "dino-vits16", "debug-siglip").
- `pretrained`: None = random weights from the preset config (tests, meta-device counts); a local
  folder or file in a format the family reads (table below); `"hub"` or a hub id only with
  `allow_download=True` (no silent network access, docs/design.md, "Frozen networks").

| family      | folder                                                 | file (.pth/.pt/.bin/.safetensors)        |
|-------------|--------------------------------------------------------|-------------------------------------------|
| siglip      | transformers `save_pretrained` (vision or text+vision) | -                                         |
| dinov2      | transformers `Dinov2Model` (backend "hf")              | torch.hub / timm state dict (backend "timm") |
| vit         | -                                                      | timm / DINO state dict                    |
| eva         | timm `save_for_hf` or OpenCLIP folder                  | timm / OpenCLIP state dict                |
| mae         | transformers `ViTMAEModel` / `ViTMAEForPreTraining`    | -                                         |
| qwen2_5_vl  | full Qwen2.5-VL folder or a saved tower folder         | -                                         |

A DINOv2 preset switches to the timm backend for a file and to transformers for a folder, so
"dinov2-base" accepts both REG's `.pth` and HF folders; the position-table rule
(`pos_embed_resize`) stays what the preset / `config` says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import VFMConfig, get_vfm_config
from vfmvae.vfm.dinov2 import HFDinov2VFM, TimmDinov2VFM
from vfmvae.vfm.eva import EVAVFM
from vfmvae.vfm.mae import MAEVFM
from vfmvae.vfm.qwen2_5_vl import Qwen25VLVisionVFM
from vfmvae.vfm.siglip import SiglipVFM
from vfmvae.vfm.timm_vit import TimmViTVFM

# Families whose folders are transformers `save_pretrained` layouts (files go through timm).
_HF_FOLDER = {"siglip": SiglipVFM, "dinov2": HFDinov2VFM, "mae": MAEVFM}


def wrapper_class(cfg: VFMConfig) -> type[FrozenVFM]:
    """The wrapper class that implements `cfg` (family + backend)."""
    if cfg.family == "dinov2":
        return HFDinov2VFM if cfg.backend == "hf" else TimmDinov2VFM
    return {
        "siglip": SiglipVFM,
        "vit": TimmViTVFM,
        "eva": EVAVFM,
        "mae": MAEVFM,
        "qwen2_5_vl": Qwen25VLVisionVFM,
    }[cfg.family]


def vfm_from_config(cfg: VFMConfig) -> FrozenVFM:
    """Random-init wrapper for `cfg` (works under `torch.device("meta")`)."""
    return wrapper_class(cfg).from_config(cfg)


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
        return cfg.replace(backend="timm", timm_arch=cfg.timm_arch or TimmDinov2VFM.default_arch(cfg.hidden_size))
    return cfg.replace(backend="hf")


def _load_local(cfg: VFMConfig, path: Path) -> FrozenVFM:
    if cfg.family in ("eva", "qwen2_5_vl"):
        if cfg.family == "qwen2_5_vl" and not path.is_dir():
            raise ValueError(f"a Qwen2.5-VL VFM loads from a folder, got the file {path}")
        return wrapper_class(cfg).from_pretrained(path, cfg)
    if path.is_dir():
        cfg = _with_backend(cfg, "hf")
        if cfg.family not in _HF_FOLDER:
            raise ValueError(f"a {cfg.family} VFM loads from a state-dict file, got the folder {path}")
        return _HF_FOLDER[cfg.family].from_pretrained(str(path), cfg, allow_download=False)
    cfg = _with_backend(cfg, "timm")
    return wrapper_class(cfg).from_file(path, cfg)


def _load_remote(cfg: VFMConfig, hub_id: str) -> FrozenVFM:
    cls = wrapper_class(cfg)
    if cfg.backend == "timm":
        return cls.from_hub(hub_id, cfg)
    if cfg.family == "qwen2_5_vl":
        from huggingface_hub import snapshot_download

        return cls.from_pretrained(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors"]), cfg)
    return cls.from_pretrained(hub_id, cfg, allow_download=True)


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
