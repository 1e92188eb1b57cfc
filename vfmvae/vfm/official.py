"""Official-checkpoint compatibility for the frozen VFM (docs/design.md, "Deviations from the official code").

Families. The official `VFMEncoder` (`networks/utils/vfm_utils.py`) picks a wrapper from the
lower-cased `vfm_name` in this order: "qwen" -> Qwen2.5-VL, "siglip2" -> SigLIP2, "dinov2",
"mae", "eva". `official_family(name)` repeats that dispatch (also accepting a plain "siglip");
the official family names map onto our `VFMConfig.family` by `FAMILY_OF`. "siglip2_text" is the
SigLIP2 family with its text tower (the text-conditional decoder); its vision side is `siglip`.

Keys. The official `Generator` stores the VFM as `vfm_encoder.encoder.vision_model.<model key>`
(`vision_model` is the official wrapper's attribute; SigLIP checkpoints written with transformers 4
carry one more `vision_model.`). Our wrappers hold the model as `backbone`, so official keys map to
`backbone.<model key>`; the same rule serves the HF models (SigLIP, DINOv2, MAE) and the timm EVA.
SigLIP's MAP head, a SigLIP text tower and EVA's CLIP head are deliberately ignored.

`vfm_from_official_config(family, vfm_config)` rebuilds the exact VFM that a fixture or a released
config records (the HF config dict; for EVA `{architecture, model_args}`), with random weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from transformers import PretrainedConfig

from vfmvae.vfm.base import FrozenVFM
from vfmvae.vfm.build import vfm_from_config
from vfmvae.vfm.config import VFMConfig, get_vfm_config

OFFICIAL_FAMILIES = ("siglip2", "siglip2_text", "dinov2", "eva", "mae", "qwen2_5_vl")
FAMILY_OF = {
    "siglip2": "siglip",
    "siglip2_text": "siglip",
    "dinov2": "dinov2",
    "eva": "eva",
    "mae": "mae",
    "qwen2_5_vl": "qwen2_5_vl",
}
# Our full-size preset per official family (what `from_official` records as `vfm_name` by default).
FAMILY_PRESET = {
    "siglip2": "siglip2-large-patch16-512",
    "siglip2_text": "siglip2-large-patch16-512",
    "dinov2": "dinov2-large",
    "eva": "eva02-large-patch14-clip-336",
    "mae": "mae-large",
    "qwen2_5_vl": "qwen2.5-vl-3b-vision",
}
# The tiny preset whose preprocessing a config-built VFM of the family inherits.
_BASE_PRESET = {
    "siglip": "debug-siglip",
    "dinov2": "debug-dinov2",
    "eva": "debug-eva",
    "mae": "debug-mae",
    "qwen2_5_vl": "debug-qwen2.5-vl",
}
_WRAPPER_SEGMENTS = ("vision_model.", "model.")
# Official keys that are deliberately not loaded (regexes on the key after prefix/segment removal).
IGNORED_OFFICIAL_VFM_KEYS = (
    r"head\..*",  # SigLIP MAP attention-pool head / EVA CLIP projection head: unused by the tokenizer
    r"fc_norm\..*",  # EVA pooled-output norm: never applied by the official wrapper
    r"text_model\..*",  # text tower of a full SigLIP checkpoint
    r"logit_(scale|bias)",  # SigLIP contrastive temperature / bias
    r"embeddings\.position_ids",  # a non-persistent buffer some versions saved
)


def official_family(name: str) -> str | None:
    """The official family a VFM name dispatches to (`vfm_utils.VFMEncoder` order on the whole lower-cased
    name), or None. A plain "siglip" (our `debug-siglip` preset) counts as SigLIP2, checked last."""
    low = str(name).lower()
    order = (("qwen", "qwen2_5_vl"), ("siglip2", "siglip2"), ("dinov2", "dinov2"), ("mae", "mae"), ("eva", "eva"))
    for key, family in (*order, ("siglip", "siglip2")):
        if key in low:
            return family
    return None


def family_of_config(vfm_config: Mapping[str, Any] | None) -> str | None:
    """The official family a VFM config dict describes (HF `model_type`, or a timm EVA architecture)."""
    d = dict(vfm_config or {})
    arch = str(d.get("architecture", ""))
    if "eva" in arch:
        return "eva"
    model_type = d.get("model_type", "siglip_vision_model" if "vision_use_head" in d else None)
    return {
        "siglip": "siglip2",
        "siglip_vision_model": "siglip2",
        "dinov2": "dinov2",
        "vit_mae": "mae",
        "qwen2_5_vl": "qwen2_5_vl",
        "qwen2_5_vl_vision": "qwen2_5_vl",
    }.get(model_type)


def check_official_family(family: str) -> str:
    if family not in OFFICIAL_FAMILIES:
        raise ValueError(f"unknown VFM family {family!r}; choose one of {OFFICIAL_FAMILIES}")
    return family


def vfm_config_from_official(
    family: str,
    vfm_config: Mapping[str, Any] | PretrainedConfig,
    compute_dtype: str = "float32",
    keep_head: bool = False,
) -> VFMConfig:
    """Our `VFMConfig` for an official family + its config dict (HF `config.json`; EVA `{architecture, model_args}`)."""
    from transformers import Dinov2Config, SiglipVisionConfig, ViTMAEConfig

    from vfmvae.vfm.dinov2 import HFDinov2VFM
    from vfmvae.vfm.eva import EVAVFM
    from vfmvae.vfm.mae import MAEVFM
    from vfmvae.vfm.qwen2_5_vl import Qwen25VLVisionVFM
    from vfmvae.vfm.siglip import SiglipVFM

    ours = FAMILY_OF[check_official_family(family)]
    d = vfm_config.to_dict() if isinstance(vfm_config, PretrainedConfig) else dict(vfm_config)
    base = get_vfm_config(_BASE_PRESET[ours], {"compute_dtype": compute_dtype})
    if ours == "siglip":
        if d.get("model_type") == "siglip" or "vision_config" in d:
            d = dict(d["vision_config"])
        hf = SiglipVisionConfig.from_dict(d)
        hf.vision_use_head = keep_head
        return SiglipVFM.config_from_hf(hf, base)
    if ours == "dinov2":
        return HFDinov2VFM.config_from_hf(Dinov2Config.from_dict(d), base)
    if ours == "mae":
        return MAEVFM.config_from_hf(ViTMAEConfig.from_dict(d), base)
    if ours == "eva":
        if "architecture" not in d:
            raise ValueError("an EVA vfm_config needs 'architecture' (timm name) and 'model_args'")
        return EVAVFM.config_from_timm(d["architecture"], d.get("model_args", {}), base)
    return Qwen25VLVisionVFM.config_from_hf(d.get("vision_config", d), base)


def vfm_from_official_config(
    family: str,
    vfm_config: Mapping[str, Any] | PretrainedConfig,
    compute_dtype: str = "float32",
    keep_head: bool = False,
) -> FrozenVFM:
    """Random-init wrapper for an official family + config dict (see `vfm_config_from_official`)."""
    return vfm_from_config(vfm_config_from_official(family, vfm_config, compute_dtype, keep_head))


def vfm_from_hf_config(
    hf_config: dict[str, Any] | PretrainedConfig, keep_head: bool = False, compute_dtype: str = "float32"
) -> FrozenVFM:
    """Random-init wrapper for a config dict whose family is evident from it (`model_type` / EVA architecture).

    Accepts `siglip_vision_model`, a full `siglip` config (its `vision_config` is used), `dinov2`,
    `vit_mae`, `qwen2_5_vl(_vision)` and the EVA `{architecture, model_args}` dict.
    `keep_head=False` drops SigLIP's unused MAP head (the tokenizer does not keep it).
    """
    d = hf_config.to_dict() if isinstance(hf_config, PretrainedConfig) else dict(hf_config)
    family = family_of_config(d)
    if family is None:
        raise ValueError(
            f"unsupported VFM config model_type {d.get('model_type')!r}; expected 'siglip_vision_model', 'siglip', "
            "'dinov2', 'vit_mae', 'qwen2_5_vl' or an EVA {architecture, model_args} dict"
        )
    return vfm_from_official_config(family, d, compute_dtype, keep_head)


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


def official_patch_size(family: str, name: str, layers=()) -> int:
    """Pixels per token the official wrapper assumes, from its name rules (used without a config).

    SigLIP2: `patch(\\d+)` in the folder name, else 16; DINOv2 and Qwen2.5-VL: 14; MAE: 16;
    EVA: 14 if "patch14" is in the name, else 16. Qwen2.5-VL's merged output (-1 alone) is 28.
    """
    low = os.path.basename(str(name).rstrip("/")).lower()
    if family in ("siglip2", "siglip2_text"):
        m = re.search(r"patch(\d+)", low)
        return int(m.group(1)) if m else 16
    if family == "eva":
        return 14 if "patch14" in low else 16
    if family == "qwen2_5_vl":
        return 28 if layers and all(i == -1 for i in layers) else 14
    return {"dinov2": 14, "mae": 16}[check_official_family(family)]


__all__ = [
    "FAMILY_OF",
    "FAMILY_PRESET",
    "IGNORED_OFFICIAL_VFM_KEYS",
    "OFFICIAL_FAMILIES",
    "check_official_family",
    "family_of_config",
    "load_official_vfm_state_dict",
    "map_official_vfm_state_dict",
    "official_family",
    "official_patch_size",
    "vfm_config_from_official",
    "vfm_from_hf_config",
    "vfm_from_official_config",
]
