"""Official-checkpoint compatibility for the frozen VFM (conventions "Official compatibility").

The official `Generator` stores its SigLIP as `vfm_encoder.encoder.vision_model.<HF key>`
(`vision_model` is the official wrapper's attribute); checkpoints written with transformers 4
carry one more `vision_model.` (the v4 `SiglipVisionModel.vision_model` child) that transformers 5
no longer has. Our wrappers hold the HF model as `backbone`, so official keys map to
`backbone.<HF key>`. SigLIP's MAP head (`head.*`) is unused by the tokenizer and deliberately
ignored unless the wrapper keeps it, as are text-tower keys of a full SigLIP checkpoint.

`vfm_from_hf_config` rebuilds the exact HF vision model that a fixture or a released config
records (e.g. `fixtures/vfmvae_tiny.json["siglip_vision_config"]`), with random weights.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2Model, PretrainedConfig, SiglipVisionConfig, SiglipVisionModel

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.config import get_vfm_config
from vfmvae.vfm.hf import HFDinov2VFM, SiglipVFM

# Wrapper segments that older / official checkpoints put between the prefix and the model keys.
_WRAPPER_SEGMENTS = ("vision_model.", "model.")
# Official keys that are deliberately not loaded (regexes on the key after prefix/segment removal).
IGNORED_OFFICIAL_VFM_KEYS = (
    r"head\..*",  # SigLIP MAP attention-pool head: unused by the tokenizer
    r"text_model\..*",  # text tower of a full SigLIP checkpoint
    r"logit_(scale|bias)",  # SigLIP contrastive temperature / bias
    r"embeddings\.position_ids",  # a non-persistent buffer some versions saved
)


def vfm_from_hf_config(
    hf_config: dict[str, Any] | PretrainedConfig, keep_head: bool = False, compute_dtype: str = "float32"
) -> FrozenVFM:
    """Random-init wrapper for an HF vision config (dict as in `config.json` or a config object).

    Accepts `siglip_vision_model`, a full `siglip` config (its `vision_config` is used) and
    `dinov2`. `keep_head=False` drops SigLIP's unused MAP head (the tokenizer does not keep it).
    """
    d = hf_config.to_dict() if isinstance(hf_config, PretrainedConfig) else dict(hf_config)
    model_type = d.get("model_type", "siglip_vision_model" if "vision_use_head" in d else None)
    if model_type == "siglip":
        d, model_type = dict(d["vision_config"]), "siglip_vision_model"
    if model_type == "siglip_vision_model":
        hf = SiglipVisionConfig.from_dict(d)
        hf.vision_use_head = keep_head
        hf._attn_implementation = d.get("_attn_implementation") or "sdpa"
        base = get_vfm_config("debug-siglip", {"compute_dtype": compute_dtype})
        return SiglipVFM(SiglipVisionModel(hf), SiglipVFM.config_from_hf(hf, base))
    if model_type == "dinov2":
        hf = Dinov2Config.from_dict(d)
        base = get_vfm_config("debug-dinov2", {"compute_dtype": compute_dtype})
        return HFDinov2VFM(Dinov2Model(hf), HFDinov2VFM.config_from_hf(hf, base))
    raise ValueError(
        f"unsupported HF vision config model_type {model_type!r}; expected 'siglip_vision_model', 'siglip' or 'dinov2'"
    )


def map_official_vfm_state_dict(
    state_dict: dict[str, torch.Tensor], vfm: FrozenVFM, prefix: str = "vfm_encoder.encoder."
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the official VFM keys under `prefix` onto `vfm.state_dict()` names.

    Keys outside `prefix` are not looked at (they belong to other modules). Returns
    `(mapped, ignored)`: `mapped` is keyed like `vfm.state_dict()` ("backbone.<model key>");
    `ignored` lists the official keys deliberately dropped. Unknown keys are an error listing them.
    """
    expected = set(vfm.state_dict().keys())
    mapped: dict[str, torch.Tensor] = {}
    ignored, unknown = [], []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        # Peel wrapper segments only while the remainder is not already a model key.
        while f"backbone.{rest}" not in expected and rest.startswith(_WRAPPER_SEGMENTS):
            rest = rest.split(".", 1)[1]
        if f"backbone.{rest}" in expected:
            mapped[f"backbone.{rest}"] = value
        elif any(re.fullmatch(p, rest) for p in IGNORED_OFFICIAL_VFM_KEYS):
            ignored.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"{len(unknown)} official VFM key(s) under {prefix!r} have no counterpart in "
            f"{type(vfm).__name__}: {unknown[:20]}"
        )
    return mapped, ignored


def load_official_vfm_state_dict(
    vfm: FrozenVFM, state_dict: dict[str, torch.Tensor], prefix: str = "vfm_encoder.encoder."
) -> list[str]:
    """Load the official VFM weights under `prefix` into `vfm` (strict); return the ignored keys."""
    mapped, ignored = map_official_vfm_state_dict(state_dict, vfm, prefix)
    missing = sorted(set(vfm.state_dict()) - set(mapped))
    if missing:
        raise KeyError(f"official state dict lacks {len(missing)} VFM key(s) under {prefix!r}: {missing[:20]}")
    for key, value in mapped.items():
        target = vfm.state_dict()[key]
        if target.shape != value.shape:
            raise ValueError(f"shape mismatch for {key}: official {tuple(value.shape)} vs ours {tuple(target.shape)}")
    vfm.load_state_dict(mapped, strict=True)
    return ignored
