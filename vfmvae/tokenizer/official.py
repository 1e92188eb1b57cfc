"""`from_official`: build a `VFMVAE` from an official VFM-VAE Generator checkpoint.

See `convert.py` for the key map of the head and decoder and for the release-file format. The
frozen VFM is built and loaded by the VFM module's own official loaders
(`vfmvae.vfm.vfm_from_hf_config`, `vfmvae.vfm.load_official_vfm_state_dict`), which map
`vfm_encoder.encoder.vision_model.[vision_model.]<HF key>` and ignore the unused MAP head.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .convert import VFM_OFFICIAL_PREFIX, config_from_official, convert_state_dict, load_official_state_dict
from .model import VFMVAE


def _build_vfm_for(cfg, vfm_config: Mapping | None, vfm_pretrained, vfm_dtype: str | None) -> nn.Module:
    from vfmvae.vfm import build_vfm, get_vfm_config, vfm_from_hf_config

    dtype = vfm_dtype or get_vfm_config(cfg.vfm_name).compute_dtype  # the paper preset: bf16 autocast
    if vfm_pretrained is not None:
        return build_vfm(cfg.vfm_name, pretrained=vfm_pretrained, config={"compute_dtype": dtype})
    if vfm_config:
        return vfm_from_hf_config(dict(vfm_config), compute_dtype=dtype)
    return build_vfm(cfg.vfm_name, config={"compute_dtype": dtype})


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
) -> VFMVAE:
    """Official `networks.generator.Generator` weights -> `VFMVAE` (eval mode).

    state_dict: official keys (as in `tests/fixtures/official/vfmvae_tiny.safetensors`), or a released
        file / wrapper dict (`G_ema`, see `load_official_state_dict`).
    generator_kwargs: the official `G_kwargs` (YAML) / fixture `generator_kwargs`.
    vfm_config: the HF `SiglipVisionConfig` dict used to build the VFM when `vfm` is not given.
    vfm: an already built frozen VFM (e.g. real SigLIP2 weights from a local folder); the
        checkpoint's VFM weights, when present, are loaded into it.
    vfm_pretrained: local folder/file with the VFM weights (used when `vfm` is None).
    decoder_only: build only the decoder and ignore all encoder-side keys (VFM, head, VF projection).
    vfm_name: our VFM preset (default: "siglip2-large-patch16-512" for the official SigLIP names).
    vfm_dtype: VFM compute dtype; default the preset's ("bfloat16" for SigLIP2-L, like the official
        CUDA autocast). Pass "float32" for exact CPU comparisons.
    """
    sd = load_official_state_dict(state_dict)
    cfg = config_from_official(generator_kwargs, vfm_config, vfm_name)
    has_vfm_weights = any(k.startswith(VFM_OFFICIAL_PREFIX) for k in sd)
    if decoder_only:
        model = VFMVAE(cfg, decoder_only=True)
    else:
        if vfm is None and vfm_pretrained is None and not has_vfm_weights:
            raise KeyError(
                "from_official: the state dict has no VFM weights (vfm_encoder.*); pass vfm= or "
                "vfm_pretrained= with the real SigLIP2 weights"
            )
        if vfm is None:
            vfm = _build_vfm_for(cfg, vfm_config, vfm_pretrained, vfm_dtype)
        model = VFMVAE(cfg, vfm=vfm)
    mapped = convert_state_dict(sd, model, decoder_only=decoder_only)
    model.load_state_dict(mapped, strict=False)  # completeness was checked by convert_state_dict
    if not decoder_only and has_vfm_weights:
        from vfmvae.vfm import load_official_vfm_state_dict

        load_official_vfm_state_dict(model.vfm, sd, prefix=VFM_OFFICIAL_PREFIX)
    return model.eval()
