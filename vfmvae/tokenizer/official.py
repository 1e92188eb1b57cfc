"""`from_official`: build a `VFMVAE` from an official VFM-VAE Generator checkpoint.

See `convert.py` for the key map and the release-file format.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .convert import config_from_official, convert_state_dict, load_official_state_dict
from .model import VFMVAE


def _find_hf_vision_model(vfm: nn.Module) -> nn.Module:
    """The transformers vision tower inside a `FrozenVFM` (whatever attribute name it uses)."""
    for m in vfm.modules():
        if all(hasattr(m, a) for a in ("embeddings", "encoder", "post_layernorm")):
            return m
    raise TypeError(f"from_official: no SigLIP vision model (embeddings/encoder/post_layernorm) found in "
                    f"{type(vfm).__name__}")


def load_vfm_weights(vfm: nn.Module, vfm_sd: Mapping) -> None:
    """Load `SiglipVisionModel`-keyed weights into the VFM; error on unknown or missing keys
    (the MAP head `head.*` may be absent on either side: it is unused)."""
    target = _find_hf_vision_model(vfm)
    result = target.load_state_dict(dict(vfm_sd), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if result.unexpected_keys or missing:
        raise KeyError(f"from_official: VFM keys do not match the vision model: unexpected "
                       f"{result.unexpected_keys}, missing {missing}")


def from_official(state_dict, generator_kwargs: Mapping, vfm_config: Mapping | None = None, *,
                  vfm: nn.Module | None = None, decoder_only: bool = False, vfm_name: str | None = None,
                  vfm_pretrained=None, vfm_dtype: str | None = None) -> VFMVAE:
    """Official `networks.generator.Generator` weights -> `VFMVAE` (eval mode).

    state_dict: official keys (as in `../shared/fixtures/vfmvae_tiny.safetensors`), or a released
        file / wrapper dict (`G_ema`, see `load_official_state_dict`).
    generator_kwargs: the official `G_kwargs` (YAML) / fixture `generator_kwargs`.
    vfm_config: `SiglipVisionConfig` fields used to build the VFM when `vfm` is not given.
    vfm: an already built frozen VFM (e.g. real SigLIP2 weights from a local folder); the
        checkpoint's VFM weights, when present, are loaded into it.
    decoder_only: build only the decoder and ignore all encoder-side keys (VFM, head, VF projection).
    vfm_name: our VFM preset (default: "siglip2-large-patch16-512" for the official SigLIP names);
        `vfm_config` (SigLIP fields) overrides its shape.
    vfm_dtype: VFM compute dtype override ("float32" for exact CPU comparisons; the paper preset runs
        bf16 autocast like the official code on CUDA).
    """
    sd = load_official_state_dict(state_dict)
    cfg = config_from_official(generator_kwargs, vfm_config, vfm_name)
    vfm_supplied = vfm is not None or vfm_pretrained is not None
    if decoder_only:
        model = VFMVAE(cfg, decoder_only=True)
    else:
        if vfm is None:
            vfm = _build_default_vfm(cfg, vfm_config, vfm_pretrained, vfm_dtype)
        model = VFMVAE(cfg, vfm=vfm)
    mapped, vfm_sd = convert_state_dict(sd, model, decoder_only=decoder_only)
    model.load_state_dict(mapped, strict=False)  # completeness was checked by convert_state_dict
    if not decoder_only:
        if vfm_sd:
            load_vfm_weights(model.vfm, vfm_sd)
        elif not vfm_supplied:
            raise KeyError("from_official: the state dict has no VFM weights (vfm_encoder.*); pass vfm= or "
                           "vfm_pretrained= with the real SigLIP2 weights")
    return model.eval()


# SigLIP `SiglipVisionConfig` field -> `vfmvae.vfm.VFMConfig` field.
_SIGLIP_FIELDS = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                  "intermediate_size": "mlp_hidden_size", "patch_size": "patch_size", "image_size": "image_size",
                  "hidden_act": "hidden_act", "layer_norm_eps": "layer_norm_eps"}


def vfm_overrides_from_siglip_config(vfm_config: Mapping | None, compute_dtype: str | None = None) -> dict:
    """`build_vfm` config overrides that reproduce an official SigLIP vision config."""
    out = {ours: vfm_config[theirs] for theirs, ours in _SIGLIP_FIELDS.items() if vfm_config and theirs in vfm_config}
    if compute_dtype is not None:
        out["compute_dtype"] = compute_dtype
    return out


def _build_default_vfm(cfg, vfm_config, vfm_pretrained, vfm_dtype):
    from .model import _build_vfm

    return _build_vfm(cfg, pretrained=vfm_pretrained, config=vfm_overrides_from_siglip_config(vfm_config, vfm_dtype))
