"""DINOv2, through transformers (`Dinov2Model` folders) or timm (torch.hub / timm `.pth` files).

Official tokenizer wrapper (`networks/utils/vfms/dinov2_utils.py`): `AutoModel.from_pretrained`,
bicubic `scale_factor` resize (antialias only when shrinking), ImageNet mean/std, patch 14, the CLS
token dropped from every layer; layers 0 = embeddings, k = block k, -1 = `last_hidden_state`
(after the final LayerNorm), -k = `hidden_states[-k+1]`. The equivariance prior branch downsizes
bicubically with antialias.

Position-table resampling (`VFMConfig.pos_embed_resize`). When the token grid differs from the
native one (518 px -> 37x37; the tokenizer runs at 448 px -> 32x32), the table is resampled
bicubically, and the two official code paths differ:

- "hf": transformers `Dinov2Embeddings.interpolate_pos_encoding`, **no antialias**. The official
  tokenizer wrapper loads DINOv2 through transformers, so the tokenizer presets use "hf".
- "timm": timm `resample_abs_pos_embed`, **with antialias**. The official SE-CKNNA extractor
  (`tools/evaluate_alignment/vfms/extract_features_by_dinov2.py`) loads DINOv2 through timm, so the
  SE-CKNNA reference uses "timm" (`vfmvae.vfm.build_se_cknna_reference`); so do the timm presets
  that REG/REPA alignment builds from torch.hub files.

The rule is a setting of the VFM, independent of which file format the weights came in: both
backends implement both rules (features differ by 1-45 % between the rules on tiny models).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from transformers import Dinov2Config, Dinov2Model

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import VFMConfig
from vfmvae.vfm.hf_utils import (
    check_same_architecture,
    load_kwargs,
    raise_on_missing,
    vit_config_fields,
    vit_config_kwargs,
)
from vfmvae.vfm.timm_vit import TimmViTVFM


def resample_position_table(
    table: torch.Tensor,
    grid: tuple[int, int],
    rule: str,
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """`(1, P + n, D)` position table -> `(1, P + h*w, D)` for the token grid `(h, w)`.

    The `P` prefix entries (CLS) are kept. Both rules leave a square table untouched at its own
    grid and interpolate bicubically (align_corners False) in float32 otherwise; "timm" adds
    antialiasing (which also changes the cubic kernel when upsampling), "hf" does not.
    """
    if rule == "timm":
        return resample_abs_pos_embed(
            table, new_size=list(grid), old_size=old_grid, num_prefix_tokens=num_prefix_tokens
        )
    if rule != "hf":
        raise ValueError(f"pos_embed_resize must be 'hf' or 'timm', got {rule!r}")
    h, w = grid
    n = table.shape[1] - num_prefix_tokens
    if n == h * w and h == w:
        return table
    side = int(n**0.5)
    prefix, patch = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    dim = table.shape[-1]
    x = patch.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    x = x.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(table.dtype)
    return torch.cat([prefix, x], dim=1)


class HFDinov2VFM(FrozenVFM):
    """Frozen DINOv2 through transformers `Dinov2Model`: token 0 is CLS, then the patch grid.

    `-1` is `last_hidden_state` (after the final LayerNorm), as `x_norm_patchtokens` in the hub
    model. The position table follows `config.pos_embed_resize` (module doc).
    """

    resize_mode = "bicubic"
    eq_prior_resize = ("bicubic", True)
    supports_dynamic_resolution = True

    def __init__(self, backbone: Dinov2Model, config: VFMConfig):
        super().__init__(config, num_prefix_tokens=1)
        self.backbone = backbone
        self.freeze()

    @staticmethod
    def hf_config(cfg: VFMConfig) -> Dinov2Config:
        if cfg.mlp_hidden_size % cfg.hidden_size:
            raise ValueError(
                f"DINOv2 needs mlp_hidden_size to be a multiple of hidden_size, got "
                f"{cfg.mlp_hidden_size} / {cfg.hidden_size}"
            )
        return Dinov2Config(
            **vit_config_kwargs(cfg, skip=("mlp_hidden_size",)),
            mlp_ratio=cfg.mlp_hidden_size // cfg.hidden_size,
            layerscale_value=cfg.layerscale_value,
            use_swiglu_ffn=False,
            **cfg.extra,
        )

    @staticmethod
    def config_from_hf(hf: Dinov2Config, base: VFMConfig) -> VFMConfig:
        return base.replace(
            backend="hf",
            **vit_config_fields(hf, skip=("mlp_hidden_size",)),
            mlp_hidden_size=int(hf.hidden_size * hf.mlp_ratio),
        )

    @classmethod
    def from_config(cls, cfg: VFMConfig) -> HFDinov2VFM:
        return cls(Dinov2Model(cls.hf_config(cfg)), cfg)

    @classmethod
    def from_pretrained(cls, path: str, cfg: VFMConfig, allow_download: bool = False) -> HFDinov2VFM:
        kw = load_kwargs(allow_download, cfg.attn_implementation)
        hf_cfg = Dinov2Config.from_pretrained(path, local_files_only=kw["local_files_only"])
        if getattr(hf_cfg, "use_swiglu_ffn", False):
            raise ValueError(f"{path}: SwiGLU DINOv2 (giant) is not supported by this wrapper")
        check_same_architecture(cfg, cls.config_from_hf(hf_cfg, cfg), path)
        model, info = Dinov2Model.from_pretrained(path, config=hf_cfg, **kw)
        raise_on_missing(info, path)
        return cls(model, cfg)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.backbone.save_pretrained(str(path))

    @contextmanager
    def _position_rule(self) -> Iterator[None]:
        """Swap in the timm rule for the duration of one forward ("hf" is transformers' own code)."""
        if self.config.pos_embed_resize == "hf":
            yield
            return
        emb = self.backbone.embeddings
        p = self.patch_size

        def timm_rule(embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
            return resample_position_table(emb.position_embeddings, (height // p, width // p), "timm")

        # An instance attribute shadows the method only while this forward runs (deepcopy/pickle stay clean).
        emb.interpolate_pos_encoding = timm_rule
        try:
            yield
        finally:
            del emb.interpolate_pos_encoding

    def _run_backbone(self, pixel_values, hidden_indices, need_final):
        with self._position_rule():
            out = self.backbone(pixel_values=pixel_values, output_hidden_states=bool(hidden_indices), return_dict=True)
        hidden = {i: out.hidden_states[i] for i in hidden_indices}
        return hidden, out.last_hidden_state if need_final else None


_DINOV2_TIMM_ARCH = {384: "vit_small_patch14_dinov2", 768: "vit_base_patch14_dinov2", 1024: "vit_large_patch14_dinov2"}


class TimmDinov2VFM(TimmViTVFM):
    """Frozen DINOv2 as a timm `vit_*_patch14_dinov2` (the torch.hub `.pth` key layout).

    The torch.hub files (`dinov2_vitb14_pretrain.pth`, what REG/REPA load with
    `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14')`) use timm's key names plus a
    `mask_token`; timm's `checkpoint_filter_fn` converts them and resamples a position table
    stored at another grid (REG's 16x16 copy) once at load. At run time the table follows
    `config.pos_embed_resize` (module doc). Register tokens (timm `*_reg4_dinov2`) are dropped.
    """

    resize_mode = "bicubic"
    eq_prior_resize = ("bicubic", True)
    supports_dynamic_resolution = True

    @staticmethod
    def create_kwargs(cfg: VFMConfig) -> dict[str, Any]:
        return {**TimmViTVFM.create_kwargs(cfg), "init_values": cfg.layerscale_value, **cfg.extra}

    @staticmethod
    def default_arch(hidden_size: int) -> str:
        return _DINOV2_TIMM_ARCH.get(hidden_size, "vit_base_patch14_dinov2")

    def _embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # timm `VisionTransformer._pos_embed` with the table resampled by our rule.
        m = self.backbone
        x = m.patch_embed(pixel_values)  # (B, h, w, D) with dynamic_img_size
        B, h, w, D = x.shape
        prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        pos = resample_position_table(
            m.pos_embed, (h, w), self.config.pos_embed_resize, prefix, tuple(m.patch_embed.grid_size)
        )
        x = x.view(B, h * w, D)
        to_cat = [t.expand(B, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if m.no_embed_class:
            x = torch.cat(to_cat + [x + pos], dim=1)
        else:
            x = torch.cat(to_cat + [x], dim=1) + pos
        return m.norm_pre(m.patch_drop(m.pos_drop(x)))


__all__ = ["HFDinov2VFM", "TimmDinov2VFM", "resample_position_table"]
