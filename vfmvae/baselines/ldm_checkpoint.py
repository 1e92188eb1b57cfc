"""VA-VAE from its released checkpoint (LDM / VQGAN-KL key names): `from_official_vavae`.

LightningDiT releases VA-VAE as ``vavae-imagenet256-f16d32-dinov2.pt``, a training checkpoint whose weights sit
under ``"state_dict"``; its ``tokenizer/autoencoder.py`` reads them with ``torch.load(path)["state_dict"]``,
drops the keys containing ``loss`` and loads the rest with ``strict=False``. We read the same file with
``torch.load(..., weights_only=True)`` and load **strictly**: every key is mapped or ignored for a stated reason.

Official -> our names (``i`` = resolution level, 0 = full resolution, in the encoder and the decoder alike):

    encoder.down.i.block.j.{norm1,conv1,norm2,conv2}   encoder.levels.i.blocks.j.{...}
    encoder.down.i.block.j.nin_shortcut                encoder.levels.i.blocks.j.shortcut
    {encoder.down,decoder.up}.i.attn.j.{norm,q,k,v,proj_out}   {encoder,decoder}.levels.i.attns.j.{norm,q,k,v,proj}
                                                       (q, k, v, proj_out: 1x1 convs -> Linear weights)
    encoder.down.i.downsample.conv / decoder.up.i.upsample.conv   levels.i.downsample.conv / levels.i.upsample.conv
    decoder.up.i.block.j.*                             decoder.levels.i.blocks.j.*
    {encoder,decoder}.mid.{block_1,attn_1,block_2}     {encoder,decoder}.mid.{block1,attn,block2}
    conv_in, norm_out, conv_out, quant_conv, post_quant_conv   unchanged

The same layout is used by every LDM ``AutoencoderKL`` checkpoint (e.g. the original SD-VAE ``.ckpt``), which
loads with ``from_official_vavae(..., kind="sdvae")`` and its ddconfig.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .autoencoder import KLAutoencoder
from .config import VAVAE_F16D32_DDCONFIG, from_ldm_ddconfig
from .keymap import KeyRule, convert_strict
from .weights_io import read_state_dict

__all__ = ["from_official_vavae", "load_vavae_state_dict", "read_vavae_yaml", "VAVAE_IGNORED", "ldm_key_rules"]

# Official keys that are not part of the tokenizer, and why.
VAVAE_IGNORED = {
    "loss.": "training loss (LPIPS network, discriminator); the official loader drops every key containing 'loss'",
    "foundation_model.": "frozen vision foundation model of the VF loss (training only; the official loader ignores it)",
    "linear_proj.": "projection of the VF loss (training only; the official loader ignores it)",
}

_P = r"(weight|bias)"
_RES = r"(norm1|conv1|norm2|conv2|nin_shortcut)"
_RENAME = {"nin_shortcut": "shortcut", "proj_out": "proj", "block_1": "block1", "block_2": "block2"}
_SIDE = {"encoder.down": "encoder", "decoder.up": "decoder"}


def _r(name: str) -> str:
    return _RENAME.get(name, name)


def ldm_key_rules() -> list[KeyRule]:
    """LDM ``AutoencoderKL`` key -> ours (see the module docstring)."""
    return [
        KeyRule(rf"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.{_P}", lambda m: m[0]),
        KeyRule(rf"(quant_conv|post_quant_conv)\.{_P}", lambda m: m[0]),
        KeyRule(
            rf"(encoder\.down|decoder\.up)\.(\d+)\.block\.(\d+)\.{_RES}\.{_P}",
            lambda m: f"{_SIDE[m[1]]}.levels.{m[2]}.blocks.{m[3]}.{_r(m[4])}.{m[5]}",
        ),
        KeyRule(
            rf"(encoder\.down|decoder\.up)\.(\d+)\.attn\.(\d+)\.norm\.{_P}",
            lambda m: f"{_SIDE[m[1]]}.levels.{m[2]}.attns.{m[3]}.norm.{m[4]}",
        ),
        KeyRule(
            rf"(encoder\.down|decoder\.up)\.(\d+)\.attn\.(\d+)\.(q|k|v|proj_out)\.{_P}",
            lambda m: f"{_SIDE[m[1]]}.levels.{m[2]}.attns.{m[3]}.{_r(m[4])}.{m[5]}",
            linear_from_conv1x1=True,
        ),
        KeyRule(
            rf"encoder\.down\.(\d+)\.downsample\.conv\.{_P}", lambda m: f"encoder.levels.{m[1]}.downsample.conv.{m[2]}"
        ),
        KeyRule(rf"decoder\.up\.(\d+)\.upsample\.conv\.{_P}", lambda m: f"decoder.levels.{m[1]}.upsample.conv.{m[2]}"),
        KeyRule(
            rf"(encoder|decoder)\.mid\.(block_1|block_2)\.{_RES}\.{_P}",
            lambda m: f"{m[1]}.mid.{_r(m[2])}.{_r(m[3])}.{m[4]}",
        ),
        KeyRule(rf"(encoder|decoder)\.mid\.attn_1\.norm\.{_P}", lambda m: f"{m[1]}.mid.attn.norm.{m[2]}"),
        KeyRule(
            rf"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.{_P}",
            lambda m: f"{m[1]}.mid.attn.{_r(m[2])}.{m[3]}",
            linear_from_conv1x1=True,
        ),
    ]


def load_vavae_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of a released VA-VAE: a checkpoint file (``.pt``/``.ckpt``/``.pth``/``.safetensors``) or an
    already loaded dict; weights nested under ``"state_dict"`` (the release) are unwrapped."""
    return read_state_dict(source, nested=("state_dict",), what="VA-VAE checkpoint")


def read_vavae_yaml(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
    """``(ddconfig, embed_dim)`` from a LightningDiT tokenizer YAML (``model.params.ddconfig`` / ``.embed_dim``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    params = (data.get("model") or {}).get("params") or {} if isinstance(data, Mapping) else {}
    if "ddconfig" not in params:
        raise KeyError(f"{path}: no model.params.ddconfig (expected a LightningDiT tokenizer/configs/*.yaml)")
    return dict(params["ddconfig"]), params.get("embed_dim")


def from_official_vavae(
    state_dict: Mapping[str, Any] | str | os.PathLike,
    ddconfig: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    embed_dim: int | None = None,
    kind: str = "vavae",
    ignore: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> KLAutoencoder:
    """Released VA-VAE weights -> `KLAutoencoder` in eval mode, loaded strictly.

    Args:
        state_dict: the released checkpoint file, or its loaded dict (official LDM key names, optionally nested
            under ``"state_dict"``).
        ddconfig: the LDM ``ddconfig`` (dict), or the LightningDiT YAML that holds it; default the released
            f16d32 config (``tokenizer/configs/vavae_f16d32.yaml``).
        embed_dim: latent channels; default the YAML's ``embed_dim``, else read off ``quant_conv.weight``, else
            ``ddconfig["z_channels"]``.
        ignore: more official key prefixes to skip, each with its reason (added to `VAVAE_IGNORED`).
        dtype: cast the weights (default float32, the precision of the latent cache); None keeps the file's.
    """
    source = None if isinstance(state_dict, Mapping) else str(state_dict)
    sd = load_vavae_state_dict(state_dict)
    if ddconfig is None:
        ddconfig = VAVAE_F16D32_DDCONFIG
    elif not isinstance(ddconfig, Mapping):
        ddconfig, yaml_embed_dim = read_vavae_yaml(ddconfig)
        embed_dim = embed_dim if embed_dim is not None else yaml_embed_dim
    if embed_dim is None and "quant_conv.weight" in sd:
        embed_dim = sd["quant_conv.weight"].shape[0] // 2
    cfg = from_ldm_ddconfig(ddconfig, embed_dim, kind=kind)
    with torch.device("meta"):
        model = KLAutoencoder(cfg)
    what = f"VA-VAE checkpoint {source}" if source else "VA-VAE state dict"
    mapped = convert_strict(sd, model, ldm_key_rules(), {**VAVAE_IGNORED, **dict(ignore or {})}, what)
    if dtype is not None:
        mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True, assign=True)
    model.source = source
    return model.eval().requires_grad_(False)
