"""Facts of an official `Generator` config that are not key maps: the VFM family and geometry, the conditioning.

`resolve_vfm_family`: `vfm_family` wins, else the official name dispatch, else the VFM config dict; a
SigLIP2 VFM of a text-conditional Generator is the "siglip2_text" family (vision + text tower).
Conditioning (docs/conditional.md), official kwargs: `conditional`, `label_type` ("text", "cls2text", "cls2id"), `label_dim` (the number of
classes of cls2id), `use_cross_attn`; the text width is the SigLIP2 text tower's `hidden_size` (official
`c_dim`), read from the VFM config's `text_config`. The key map is in `convert.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .config import VFMVAEConfig


def resolve_vfm_family(
    generator_kwargs: Mapping, vfm_config: Mapping | None = None, vfm_name: str | None = None, vfm_family=None
) -> str:
    """The official VFM family: `vfm_family` if given, else the official name dispatch on `vfm_name` (ours)
    or the official `vfm_name`, else what the config dict describes (`vfmvae.vfm.official`)."""
    from vfmvae.vfm.official import check_official_family, family_of_config, official_family

    if vfm_family is not None:
        return check_official_family(vfm_family)
    text = generator_kwargs.get("conditional") and generator_kwargs.get("label_type") in ("text", "cls2text")
    for name in (vfm_name, generator_kwargs.get("vfm_name")):
        if name and official_family(name):
            return "siglip2_text" if text and official_family(name) == "siglip2" else official_family(name)
    family = family_of_config(vfm_config)
    if text and family == "siglip2":
        return "siglip2_text"
    if family is None:
        raise ValueError(
            f"config_from_official: cannot tell the VFM family from vfm_name {generator_kwargs.get('vfm_name')!r}; "
            "pass vfm_family= (siglip2, siglip2_text, dinov2, eva, mae, qwen2_5_vl)"
        )
    return family


def _vfm_geometry(family: str, g: Mapping, vfm_config: Mapping | None, vfm_name: str | None) -> tuple[int, int | None]:
    """(pixels per token, VFM width or None) of the official VFM, from its config or its name."""
    from vfmvae.vfm.official import official_patch_size, vfm_config_from_official

    layers = list(g["patch_from_layers"])
    if not vfm_config:
        return official_patch_size(family, str(vfm_name or g.get("vfm_name", "")), layers), None
    vcfg = vfm_config_from_official(family, vfm_config)
    if family == "qwen2_5_vl" and layers and all(i == -1 for i in layers):  # merged output on its own grid
        return vcfg.patch_size * int(vcfg.extra.get("spatial_merge_size", 2)), int(vcfg.extra["out_hidden_size"])
    return vcfg.patch_size, vcfg.hidden_size


def conditioning_from_official(g: Mapping, family: str, vfm_config: Mapping | None) -> dict:
    """The conditioning fields of `VFMVAEConfig` from the official `conditional`, `label_type`, `label_dim`,
    `use_cross_attn` (docs/conditional.md); the text width from the VFM config's `text_config`."""
    from vfmvae.vfm.siglip2_text import TEXT_PRESETS, text_preset_for

    cross = bool(g.get("use_cross_attn", False))
    if not g.get("conditional", False):
        if cross:
            raise ValueError("config_from_official: use_cross_attn=True needs conditional=True (text tokens)")
        return {}
    label_type = g.get("label_type")
    if label_type not in ("text", "cls2text", "cls2id"):
        raise ValueError(f"config_from_official: unknown label_type {label_type!r} (text, cls2text, cls2id)")
    if label_type == "cls2id":
        if cross:
            raise ValueError("config_from_official: use_cross_attn=True with label_type 'cls2id' (no text tokens)")
        return dict(label_type="cls2id", num_classes=int(g.get("label_dim") or 1000), class_embed_dim=1024)
    if family not in ("siglip2", "siglip2_text"):
        raise ValueError(f"config_from_official: a {label_type!r} decoder needs the SigLIP2 text tower, not {family}")
    text_cfg = dict((vfm_config or {}).get("text_config") or {})
    preset = text_preset_for(text_cfg) if text_cfg else "siglip2-large-patch16-512"
    width = int(text_cfg.get("hidden_size", TEXT_PRESETS[preset]["hf"]["hidden_size"]))
    return dict(label_type=label_type, cross_attention=cross, text_dim=width, text_encoder=preset)


def check_official_cls2id_mapping(state_dict: Mapping[str, torch.Tensor], cfg: VFMVAEConfig) -> None:
    """An official cls2id mapping MLP is as wide as its code builds it (class embedding counted twice), so
    it cannot have been trained; say so instead of a bare shape mismatch (docs/conditional.md)."""
    w = state_dict.get("mapping.mlp.fc0.weight")
    if cfg.label_type == "cls2id" and w is not None and w.shape[1] == cfg.lifted_dim + 2 * cfg.class_embed_dim:
        raise ValueError(
            "from_official: this cls2id mapping MLP takes the class embedding twice (the official width bug), so "
            "the official code cannot run it; only checkpoints with the intended width load"
        )


__all__ = ["check_official_cls2id_mapping", "conditioning_from_official", "resolve_vfm_family"]
