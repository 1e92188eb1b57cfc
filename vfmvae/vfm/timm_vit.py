"""timm-backed frozen ViTs: DINO ViT-S/16 (projected discriminator); base of the timm DINOv2 backend.

The original DINO ViT-S/16 release (`dino_deitsmall16_pretrain.pth`) is plain timm keys; timm's
`checkpoint_filter_fn` converts other ViT layouts and resamples the position embedding when the
grid differs. DINOv2 in the torch.hub format is `vfmvae.vfm.dinov2.TimmDinov2VFM` (a subclass).

Models are created with `dynamic_img_size=True`, so any input that is a multiple of the patch
size works (position embeddings resampled by timm: bicubic with antialias).

Also holds the state-dict file helpers shared by the timm wrappers (`load_state_dict_file`,
`unwrap_vit_state_dict`).
"""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import VFMConfig

# Wrappers seen around ViT state dicts: training checkpoints and DINO's teacher/student dicts.
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "module")
_STRIP_PREFIXES = ("module.", "backbone.", "encoder.")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin` (torch.load, weights only) or `.safetensors` state dict on CPU."""
    from vfmvae.utils.safe_load import load_user_file

    obj = load_user_file(path, what="VFM weights file")
    if not isinstance(obj, dict):
        raise TypeError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    return obj


def load_exact_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: Any, arch: str) -> None:
    """Load ``sd`` into a timm ``model`` with no key missing or left over; a shape mismatch (the wrong preset for
    this file) and any key difference are one-line errors naming ``path`` and ``arch``."""
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {arch}: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: missing keys {result.missing_keys[:20]}, unexpected keys {result.unexpected_keys[:20]}"
        )


def unwrap_vit_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Peel `{"model": ...}`-style wrappers and common prefixes; drop classifier/projection heads."""
    for key in _WRAPPER_KEYS:
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    for prefix in _STRIP_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    # Our ViTs are built with num_classes=0: any classifier / DINO head weights are unused.
    return {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm.", "pre_logits."))}


class TimmViTVFM(FrozenVFM):
    """Frozen timm `VisionTransformer` with a CLS token (DINO ViT-S/16; DINOv2 hub format via a subclass).

    Layer 0 is the sequence after patch embedding, CLS concat and position embedding (the
    discriminator's "patch-embedding" tap); block k and -1 (after the final `norm`) as in `base`.
    """

    resize_mode = "bilinear"
    eq_prior_resize = ("bilinear", True)
    supports_dynamic_resolution = True

    def __init__(self, backbone: torch.nn.Module, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=int(backbone.num_prefix_tokens))
        if getattr(backbone, "cls_token", None) is None:
            raise ValueError(f"timm model {config.timm_arch} has no CLS token; this wrapper expects one")
        self.backbone = backbone
        self.freeze()

    @staticmethod
    def create_kwargs(cfg: VFMConfig) -> dict[str, Any]:
        if cfg.mlp_hidden_size % cfg.hidden_size:
            raise ValueError(
                f"mlp_hidden_size {cfg.mlp_hidden_size} must be a multiple of hidden_size "
                f"{cfg.hidden_size} for timm ViTs"
            )
        kw = dict(
            num_classes=0,
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.hidden_size,
            depth=cfg.num_layers,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_hidden_size / cfg.hidden_size,
            dynamic_img_size=True,
        )
        return {**kw, **cfg.extra}

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> TimmViTVFM:
        return cls(timm.create_model(cfg.timm_arch, pretrained=False, **cls.create_kwargs(cfg)), cfg)

    @classmethod
    def from_file(cls, path: str | os.PathLike, cfg: VFMConfig) -> TimmViTVFM:
        """Load a torch.hub / timm / DINO state dict file (strict: unknown or missing keys are an error)."""
        model = timm.create_model(cfg.timm_arch, pretrained=False, **cls.create_kwargs(cfg))
        sd = unwrap_vit_state_dict(load_state_dict_file(path))
        # timm's filter mutates its input (pops `mask_token`): hand it a copy.
        sd = checkpoint_filter_fn(dict(sd), model)
        arch = f"preset {cfg.timm_arch} (hidden {cfg.hidden_size}, depth {cfg.num_layers})"
        load_exact_state_dict(model, sd, path, arch)
        return cls(model, cfg)

    @classmethod
    def from_hub(cls, name: str, cfg: VFMConfig) -> TimmViTVFM:
        """Download through timm (only called when the user allowed network access)."""
        kw = cls.create_kwargs(cfg)
        kw.pop("init_values", None)
        return cls(timm.create_model(name, pretrained=True, **kw), cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the backbone state dict as a `.pth` file in timm key names (reloads via `build_vfm`)."""
        torch.save(self.backbone.state_dict(), str(path))

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tokens entering block 1: patch embedding, prefix tokens, position table (timm's own resampling)."""
        m = self.backbone
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixel_values))))

    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        m = self.backbone
        # Same steps as timm `VisionTransformer.forward_features`, keeping the embedding output.
        x = self._embed(pixel_values)
        hidden = {0: x} if 0 in hidden_indices else {}
        # Stop after the deepest requested block unless the post-norm output is needed.
        depth = self.num_layers if need_final else max(hidden_indices)
        for k in range(1, depth + 1):
            x = m.blocks[k - 1](x)
            if k in hidden_indices:
                hidden[k] = x
        return hidden, m.norm(x) if need_final else None
