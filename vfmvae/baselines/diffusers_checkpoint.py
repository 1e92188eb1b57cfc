"""SD-VAE (and any diffusers ``AutoencoderKL``) from diffusers-format weights: `from_diffusers_autoencoder`.

The diffusers package is not needed: a diffusers folder is ``config.json`` + ``diffusion_pytorch_model.safetensors``
(or ``.bin``, read with ``weights_only=True``); a full pipeline folder with a ``vae/`` subfolder works too.

diffusers -> our names (``n`` levels; diffusers numbers decoder blocks in execution order, lowest resolution
first, we number them by resolution level like the encoder, so ``up_blocks.i`` is our level ``n - 1 - i``):

    encoder.down_blocks.i.resnets.j.{norm1,conv1,norm2,conv2}   encoder.levels.i.blocks.j.{...}
    *.resnets.j.conv_shortcut                                 *.blocks.j.shortcut
    encoder.down_blocks.i.downsamplers.0.conv                 encoder.levels.i.downsample.conv
    decoder.up_blocks.i.resnets.j.*                           decoder.levels.(n-1-i).blocks.j.*
    decoder.up_blocks.i.upsamplers.0.conv                     decoder.levels.(n-1-i).upsample.conv
    {encoder,decoder}.mid_block.resnets.{0,1}                 {encoder,decoder}.mid.{block1,block2}
    {encoder,decoder}.mid_block.attentions.0.group_norm       {encoder,decoder}.mid.attn.norm
    ....attentions.0.{to_q,to_k,to_v,to_out.0}                ....attn.{q,k,v,proj}   (Linear, as ours)
      (older files: query, key, value, proj_attn; diffusers renames them at load time as well)
    {encoder,decoder}.conv_norm_out                           {encoder,decoder}.norm_out
    conv_in, conv_out, quant_conv, post_quant_conv            unchanged
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .autoencoder import KLAutoencoder
from .config import from_diffusers_config, read_json_config
from .keymap import KeyRule, convert_strict
from .weights_io import read_state_dict

__all__ = ["from_diffusers_autoencoder", "diffusers_key_rules", "resolve_diffusers_folder", "DIFFUSERS_WEIGHTS"]

# Weight files of a diffusers model folder, in the order diffusers prefers them.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

_P = r"(weight|bias)"
_RES = r"(norm1|conv1|norm2|conv2|conv_shortcut)"
_ATTN = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj",
}


def _res(name: str) -> str:
    return "shortcut" if name == "conv_shortcut" else name


def diffusers_key_rules(num_levels: int) -> list[KeyRule]:
    """diffusers ``AutoencoderKL`` key -> ours, for a model with ``num_levels`` resolution levels."""
    top = num_levels - 1
    return [
        KeyRule(rf"(encoder|decoder)\.(conv_in|conv_out)\.{_P}", lambda m: m[0]),
        KeyRule(rf"(encoder|decoder)\.conv_norm_out\.{_P}", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        KeyRule(rf"(quant_conv|post_quant_conv)\.{_P}", lambda m: m[0]),
        KeyRule(
            rf"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.{_RES}\.{_P}",
            lambda m: f"encoder.levels.{m[1]}.blocks.{m[2]}.{_res(m[3])}.{m[4]}",
        ),
        KeyRule(
            rf"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.{_P}",
            lambda m: f"encoder.levels.{m[1]}.downsample.conv.{m[2]}",
        ),
        KeyRule(
            rf"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.{_RES}\.{_P}",
            lambda m: f"decoder.levels.{top - int(m[1])}.blocks.{m[2]}.{_res(m[3])}.{m[4]}",
        ),
        KeyRule(
            rf"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.{_P}",
            lambda m: f"decoder.levels.{top - int(m[1])}.upsample.conv.{m[2]}",
        ),
        KeyRule(
            rf"(encoder|decoder)\.mid_block\.resnets\.([01])\.{_RES}\.{_P}",
            lambda m: f"{m[1]}.mid.block{int(m[2]) + 1}.{_res(m[3])}.{m[4]}",
        ),
        KeyRule(
            rf"(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.{_P}", lambda m: f"{m[1]}.mid.attn.norm.{m[2]}"
        ),
        KeyRule(
            rf"(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.{_P}",
            lambda m: f"{m[1]}.mid.attn.{_ATTN[m[2]]}.{m[3]}",
            linear_from_conv1x1=True,  # some old exports store these as 1x1 convs
        ),
    ]


def resolve_diffusers_folder(folder: str | os.PathLike) -> tuple[Path, Path]:
    """``(config.json, weights file)`` of a diffusers ``AutoencoderKL`` folder (or a pipeline folder's ``vae/``)."""
    root = Path(folder).expanduser()
    if not (root / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        root = root / "vae"
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root} is not a diffusers AutoencoderKL folder: config.json is missing")
    for name in DIFFUSERS_WEIGHTS:
        if (root / name).is_file():
            return root / "config.json", root / name
    present = sorted(p.name for p in root.iterdir())
    raise FileNotFoundError(f"{root}: no {' or '.join(DIFFUSERS_WEIGHTS)} (found {present}); download the full folder")


def from_diffusers_autoencoder(
    source: Mapping[str, Any] | str | os.PathLike,
    diffusers_config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    kind: str = "sdvae",
    dtype: torch.dtype | None = torch.float32,
) -> KLAutoencoder:
    """diffusers ``AutoencoderKL`` weights -> `KLAutoencoder` in eval mode, loaded strictly.

    Args:
        source: a diffusers folder (``config.json`` + weights), a weights file, or a state dict with diffusers'
            key names.
        diffusers_config: the ``config.json`` content (dict or file); required for a state dict or a bare weights
            file, optional (overrides the folder's) for a folder.
        kind: family name recorded in provenance.
        dtype: cast the weights (default float32); None keeps the file's.
    """
    origin = None
    if isinstance(source, Mapping):
        state = read_state_dict(source, what="diffusers AutoencoderKL state dict")
    else:
        path = Path(source).expanduser()
        origin = str(path)
        if path.is_dir():
            config_file, weights = resolve_diffusers_folder(path)
            diffusers_config = config_file if diffusers_config is None else diffusers_config
        else:
            weights = path
            if diffusers_config is None and (path.parent / "config.json").is_file():
                diffusers_config = path.parent / "config.json"
        state = read_state_dict(weights, what="diffusers AutoencoderKL weights")
    if diffusers_config is None:
        raise ValueError(
            "from_diffusers_autoencoder: pass diffusers_config= (the model's config.json, as a dict or a path), "
            "or give the diffusers folder instead of bare weights"
        )
    config = read_json_config(diffusers_config)
    cfg = from_diffusers_config(config, kind=kind)
    with torch.device("meta"):
        model = KLAutoencoder(cfg)
    what = f"diffusers AutoencoderKL {origin}" if origin else "diffusers AutoencoderKL state dict"
    mapped = convert_strict(state, model, diffusers_key_rules(len(cfg.channels)), {}, what)
    if dtype is not None:
        mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True, assign=True)
    model.source = origin
    return model.eval().requires_grad_(False)
