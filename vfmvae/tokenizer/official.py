"""`from_official`: build a `VFMVAE` from an official VFM-VAE Generator checkpoint.

See `convert.py` for the key map of the head and decoder, the family resolution and the release-file
format. The frozen VFM is built and loaded by the VFM module's own official loaders
(`vfmvae.vfm.vfm_from_official_config`, `vfmvae.vfm.load_official_vfm_state_dict`), which map
`vfm_encoder.encoder.vision_model.[vision_model.]<model key>` and ignore unused heads.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .convert import (
    VFM_OFFICIAL_PREFIX,
    config_from_official,
    convert_state_dict,
    load_official_state_dict,
    resolve_vfm_family,
)
from .model import VFMVAE
from .official_config import check_official_cls2id_mapping

TEXT_OFFICIAL_PREFIX = VFM_OFFICIAL_PREFIX + "text_model."


def _build_vfm_for(cfg, family: str, vfm_config: Mapping | None, vfm_pretrained, vfm_dtype: str | None) -> nn.Module:
    from vfmvae.vfm import build_vfm, get_vfm_config, vfm_from_official_config

    dtype = vfm_dtype or get_vfm_config(cfg.vfm_name).compute_dtype  # the paper preset: bf16 autocast
    if vfm_pretrained is not None:
        return build_vfm(cfg.vfm_name, pretrained=vfm_pretrained, config={"compute_dtype": dtype})
    if vfm_config:
        return vfm_from_official_config(family, dict(vfm_config), compute_dtype=dtype)
    return build_vfm(cfg.vfm_name, config={"compute_dtype": dtype})


def _build_text_tower_for(cfg, vfm_config: Mapping | None, vfm_pretrained, vfm_dtype: str | None) -> nn.Module:
    """The SigLIP2 text tower of a "text" / "cls2text" Generator: from the local SigLIP2 folder, else from the
    full SigLIP config's `text_config` (random weights, filled from the checkpoint), else the preset."""
    from vfmvae.vfm.siglip2_text import TEXT_PRESETS, SiglipTextTower, build_text_tower

    dtype = vfm_dtype or TEXT_PRESETS[cfg.text_encoder]["compute_dtype"]
    if vfm_pretrained is not None:
        return build_text_tower(cfg.text_encoder, pretrained=vfm_pretrained, compute_dtype=dtype)
    if vfm_config and "text_config" in vfm_config:
        return SiglipTextTower.from_config(vfm_config["text_config"], dtype, preset=cfg.text_encoder)
    return build_text_tower(cfg.text_encoder, compute_dtype=dtype)


def _check_vfm_fits(vfm: nn.Module, cfg) -> None:
    """The VFM's grid and width must be what the official kwargs describe (one-line error otherwise)."""
    if not hasattr(vfm, "token_stride"):
        return  # a stand-in module (tests of the head alone)
    from vfmvae.vfm import check_layers_share_grid

    stride = check_layers_share_grid(vfm, cfg.vfm_layers, cfg.vfm_hidden_size)
    if stride != cfg.vfm_patch_size:
        raise ValueError(
            f"from_official: the VFM has {stride} pixels per token for layers {list(cfg.vfm_layers)}, but the "
            f"official config implies {cfg.vfm_patch_size}; pass the VFM's config (vfm_config=) or vfm_family="
        )


def from_official(
    state_dict,
    generator_kwargs: Mapping,
    vfm_config: Mapping | None = None,
    *,
    vfm: nn.Module | None = None,
    decoder_only: bool = False,
    vfm_name: str | None = None,
    vfm_pretrained=None,
    vfm_dtype: str | None = None,
    vfm_family: str | None = None,
    text_encoder: nn.Module | None = None,
) -> VFMVAE:
    """Official `networks.generator.Generator` weights -> `VFMVAE` (eval mode).

    state_dict: official keys (as in `tests/fixtures/official/vfmvae_tiny.safetensors`), or a released
        file / wrapper dict (`G_ema`, see `load_official_state_dict`).
    generator_kwargs: the official `G_kwargs` (YAML) / fixture `generator_kwargs`.
    vfm_config: the VFM's config dict, used to build the VFM when `vfm` is not given: the HF
        `config.json` dict (SigLIP vision or full SigLIP, DINOv2, ViT-MAE, Qwen2.5-VL) or, for EVA,
        `{"architecture": <timm name>, "model_args": {...}}`.
    vfm: an already built frozen VFM (e.g. real weights from a local folder); the checkpoint's VFM
        weights, when present, are loaded into it.
    vfm_pretrained: local folder/file with the VFM weights (used when `vfm` is None).
    decoder_only: build only the decoder and ignore all encoder-side keys (VFM, head, VF projection).
    vfm_name: our VFM preset (default: the family's full-size preset, e.g. "siglip2-large-patch16-512").
    vfm_dtype: VFM compute dtype; default the preset's ("bfloat16" for the full-size presets, like the
        official CUDA autocast). Pass "float32" for exact CPU comparisons.
    vfm_family: "siglip2", "siglip2_text", "dinov2", "eva", "mae" or "qwen2_5_vl"; wins over any
        name. Without it the family is inferred from `vfm_name` / the official `vfm_name` as the
        official dispatch does, then from `vfm_config`. ("siglip2_text": the SigLIP2 vision tower and, for a
        text-conditional Generator, its text tower.)
    text_encoder: an already built text tower (conditional "text" / "cls2text" models); otherwise it is
        loaded from `vfm_pretrained` (the SigLIP2 folder holds both towers) or built from `vfm_config`'s
        `text_config`, and the checkpoint's `vfm_encoder.encoder.text_model.*` weights are loaded into it.
    Conditional checkpoints (`conditional=True`; docs/conditional.md) map cross-attention and the class
    embedding too; the returned model then takes `text=` / `class_labels=` in `decode` and `forward`.
    """
    sd = load_official_state_dict(state_dict)
    family = resolve_vfm_family(generator_kwargs, vfm_config, vfm_name, vfm_family)
    cfg = config_from_official(generator_kwargs, vfm_config, vfm_name, family)
    check_official_cls2id_mapping(sd, cfg)
    has_vfm_weights = any(k.startswith(VFM_OFFICIAL_PREFIX) for k in sd)
    if decoder_only:
        model = VFMVAE(cfg, decoder_only=True)
    else:
        if vfm is None and vfm_pretrained is None and not has_vfm_weights:
            raise KeyError(
                "from_official: the state dict has no VFM weights (vfm_encoder.*); pass vfm= or "
                "vfm_pretrained= with the real VFM weights"
            )
        if vfm is None:
            vfm = _build_vfm_for(cfg, family, vfm_config, vfm_pretrained, vfm_dtype)
        _check_vfm_fits(vfm, cfg)
        text_source = vfm_pretrained if cfg.uses_text and text_encoder is None else None
        if cfg.uses_text and text_encoder is None:
            text_encoder = _build_text_tower_for(cfg, vfm_config, vfm_pretrained, vfm_dtype)
        model = VFMVAE(cfg, vfm=vfm, text_encoder=text_encoder, text_pretrained=text_source)
    mapped = convert_state_dict(sd, model, decoder_only=decoder_only)
    model.load_state_dict(mapped, strict=False)  # completeness was checked by convert_state_dict
    if not decoder_only and has_vfm_weights:
        from vfmvae.vfm import load_official_vfm_state_dict

        load_official_vfm_state_dict(model.vfm, sd, prefix=VFM_OFFICIAL_PREFIX)
    if model.text_encoder is not None and any(k.startswith(TEXT_OFFICIAL_PREFIX) for k in sd):
        from vfmvae.vfm.siglip2_text import load_official_text_state_dict

        load_official_text_state_dict(model.text_encoder, sd, prefix=TEXT_OFFICIAL_PREFIX)
    return model.eval()
