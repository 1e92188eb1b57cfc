"""EVA-02 CLIP vision towers through timm (`eva02_*_patch14_clip_*`; the paper's EVA-CLIP-L tokenizer).

Official wrapper (`networks/utils/vfms/eva_utils.py`): `timm.create_model(name, pretrained=True,
dynamic_img_size=True)`, then a manual forward:

    x = patch_embed(img); x, rope = _pos_embed(x)     # layer 0: absolute table resampled to the
                                                      # runtime grid (timm: bicubic + antialias), CLS
    x = norm_pre(x); x = block_k(x, rope=rope)        # layer k: block k (RoPE built for the grid)
                                                      # layer -1: the LAST BLOCK, no final norm

The final `norm`, `fc_norm` and CLIP head are never applied, so -1 is *not* normalised (unlike
SigLIP/DINOv2), and no other negative index exists (the official code raises `KeyError`; we raise a
clear error). The CLS token is dropped. Preprocessing: **bilinear** `scale_factor` resize
(antialias only when shrinking; the official `VFM2INTERPOLATION` table says bicubic for eva, but
that table only drives the losses) and CLIP mean/std. The equivariance prior branch downsizes
bilinearly *without* antialias. Patch size 14 (`'patch14' in name`, else 16).

On disk: a timm `save_for_hf` folder (`config.json` with `architecture` + `model_args`, and
`model.safetensors` / `pytorch_model.bin`), an OpenCLIP checkpoint (`open_clip_pytorch_model.bin`
or `open_clip_model.safetensors`, keys `visual.trunk.*`; the text tower is ignored), or a single
state-dict file. timm's own `checkpoint_filter_fn` reads all of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.eva import checkpoint_filter_fn

from vfmvae.vfm.base import FINAL, FrozenVFM, resolve_layer
from vfmvae.vfm.config import VFMConfig
from vfmvae.vfm.hf_utils import check_same_architecture
from vfmvae.vfm.timm_vit import load_exact_state_dict, load_state_dict_file

_WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
# Arguments of a timm `config.json` that VFMConfig holds in its own fields.
_OWN_ARGS = {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes", "dynamic_img_size"}


class EVAVFM(FrozenVFM):
    """Frozen timm `Eva` (EVA-02 CLIP) with the official layer convention (module doc)."""

    resize_mode = "bilinear"
    eq_prior_resize = ("bilinear", False)
    supports_dynamic_resolution = True

    def __init__(self, backbone: torch.nn.Module, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=int(backbone.num_prefix_tokens))
        self.backbone = backbone
        self.freeze()

    # ----------------------------------------------------------------- layers
    def resolve_layer(self, index: int) -> int | str:
        if isinstance(index, int) and not isinstance(index, bool) and index < -1:
            raise ValueError(
                f"layer index {index}: the EVA wrapper takes 0..{self.num_layers} and -1 (= last block, no final "
                "norm) only, as the official EVAEncoder; use the positive block index"
            )
        resolved = resolve_layer(index, self.num_layers)
        return self.num_layers if resolved == FINAL else resolved  # -1 is block L itself

    # ----------------------------------------------------------------- building
    @staticmethod
    def create_kwargs(cfg: VFMConfig) -> dict[str, Any]:
        kw = dict(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.hidden_size,
            depth=cfg.num_layers,
            num_heads=cfg.num_heads,
            num_classes=0,  # the CLIP projection head is never used by the tokenizer
            dynamic_img_size=True,
        )
        return {**kw, **cfg.extra}

    @classmethod
    def _create(cls, cfg: VFMConfig) -> torch.nn.Module:
        model = timm.create_model(cfg.timm_arch, pretrained=False, **cls.create_kwargs(cfg))
        mlp = model.blocks[0].mlp.fc2.in_features if len(model.blocks) else cfg.mlp_hidden_size
        if mlp != cfg.mlp_hidden_size:  # the MLP width is fixed by the architecture's mlp_ratio
            raise ValueError(
                f"timm {cfg.timm_arch} with width {cfg.hidden_size} has MLP width {mlp}, not mlp_hidden_size="
                f"{cfg.mlp_hidden_size}; set mlp_hidden_size={mlp} or pass mlp_ratio through `extra`"
            )
        return model

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> EVAVFM:
        return cls(cls._create(cfg), cfg)

    @staticmethod
    def config_from_timm(arch: str, model_args: dict[str, Any], base: VFMConfig) -> VFMConfig:
        """`VFMConfig` for a timm architecture + `model_args` (as in a `save_for_hf` config.json)."""
        args = dict(model_args)
        img = args.get("img_size", base.image_size)
        patch = args.get("patch_size", 14 if "patch14" in arch else 16)  # the official wrapper's rule
        probe = base.replace(
            timm_arch=arch,
            image_size=int(img[0] if isinstance(img, (list, tuple)) else img),
            patch_size=int(patch),
            hidden_size=int(args.get("embed_dim", base.hidden_size)),
            num_layers=int(args.get("depth", base.num_layers)),
            num_heads=int(args.get("num_heads", base.num_heads)),
            extra={k: v for k, v in args.items() if k not in _OWN_ARGS and k not in ("in_chans", "global_pool")},
        )
        with torch.device("meta"):  # read the MLP width off the architecture, without allocating
            model = timm.create_model(arch, pretrained=False, **EVAVFM.create_kwargs(probe))
        return probe.replace(mlp_hidden_size=int(model.blocks[0].mlp.fc2.in_features))

    # ----------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, cfg: VFMConfig) -> EVAVFM:
        """A timm `save_for_hf` / OpenCLIP folder or a single state-dict file (module doc); strict."""
        path = Path(path)
        if path.is_dir():
            config_file = path / "config.json"
            if config_file.is_file():
                meta = json.loads(config_file.read_text())
                if "architecture" in meta:
                    loaded = cls.config_from_timm(meta["architecture"], meta.get("model_args", {}), cfg)
                    fields = ("hidden_size", "num_layers", "num_heads", "mlp_hidden_size", "patch_size")
                    check_same_architecture(cfg, loaded, str(path), fields)
            files = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
            if not files:
                raise FileNotFoundError(f"{path}: no EVA weights found (looked for {', '.join(_WEIGHT_FILES)})")
            path = files[0]
        model = cls._create(cfg)
        raw = load_state_dict_file(path)
        # timm converts OpenCLIP (`visual.trunk.`) and original EVA layouts and resamples the table.
        sd = checkpoint_filter_fn(dict(raw), model)
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}  # unused CLIP head
        load_exact_state_dict(model, sd, path, f"{cfg.timm_arch} (width {cfg.hidden_size})")
        return cls(model, cfg)

    @classmethod
    def from_hub(cls, name: str, cfg: VFMConfig) -> EVAVFM:
        """Download through timm (only called when the user allowed network access)."""
        kw = cls.create_kwargs(cfg)
        return cls(timm.create_model(name, pretrained=True, **kw), cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a timm `save_for_hf` folder (`config.json` + `model.safetensors`) that `build_vfm` reloads."""
        from timm.models import save_for_hf

        save_for_hf(self.backbone, str(path))

    # ----------------------------------------------------------------- forward
    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        m = self.backbone
        x = m.patch_embed(pixel_values)
        x, rope = m._pos_embed(x)
        hidden = {0: x} if 0 in hidden_indices else {}
        x = m.norm_pre(x)
        depth = max(hidden_indices, default=0)
        for k in range(1, depth + 1):
            x = m.blocks[k - 1](x, rope=rope)
            if k in hidden_indices:
                hidden[k] = x
        return hidden, None


__all__ = ["EVAVFM"]
