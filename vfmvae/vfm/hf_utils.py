"""Shared helpers for the transformers-backed wrappers: loading kwargs and architecture checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vfmvae.vfm.config import VFMConfig

# `VFMConfig` field -> attribute of a transformers ViT-style vision config (SigLIP, ViT-MAE; DINOv2 but for
# the MLP width, which it stores as `mlp_ratio`). The same names both ways, so a wrapper cannot map one way only.
VIT_CONFIG_FIELDS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "mlp_hidden_size": "intermediate_size",
    "patch_size": "patch_size",
    "image_size": "image_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
}


def vit_config_kwargs(cfg: VFMConfig, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments of a transformers ViT-style config for ``cfg`` (plus its attention implementation);
    ``skip`` leaves out `VFMConfig` fields the family stores otherwise."""
    kw = {hf: getattr(cfg, ours) for ours, hf in VIT_CONFIG_FIELDS.items() if ours not in skip}
    return {**kw, "attn_implementation": cfg.attn_implementation}


def vit_config_fields(hf: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The `VFMConfig` fields read back from a transformers ViT-style config (the inverse of `vit_config_kwargs`)."""
    return {ours: getattr(hf, name) for ours, name in VIT_CONFIG_FIELDS.items() if ours not in skip}


# Architecture fields that must agree between a preset and a loaded checkpoint.
ARCH_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_hidden_size", "patch_size", "image_size")


def check_same_architecture(
    preset: VFMConfig, loaded: VFMConfig, where: str, fields: Sequence[str] = ARCH_FIELDS
) -> None:
    """One-line error naming every architecture field where a checkpoint differs from the chosen preset."""
    diffs = {f: (getattr(preset, f), getattr(loaded, f)) for f in fields if getattr(preset, f) != getattr(loaded, f)}
    if diffs:
        text = ", ".join(f"{k}: preset {a} vs checkpoint {b}" for k, (a, b) in diffs.items())
        raise ValueError(
            f"checkpoint {where} does not match the chosen VFM preset ({text}); "
            "pick the matching preset or pass `config` overrides"
        )


def load_kwargs(allow_download: bool, attn_implementation: str) -> dict[str, Any]:
    # transformers 5 defaults to dtype="auto"; frozen weights are kept in float32 and the compute
    # precision comes from `compute_dtype` (autocast), as in the official wrapper.
    return dict(
        local_files_only=not allow_download,
        dtype=torch.float32,
        attn_implementation=attn_implementation,
        output_loading_info=True,
    )


def raise_on_missing(info: dict, where: str, allowed_mismatch: Sequence[str] = ()) -> None:
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(
        str(m) for m in info.get("mismatched_keys", ()) if not any(a in str(m) for a in allowed_mismatch)
    )
    if missing or mismatched:
        raise ValueError(f"loading {where}: missing keys {missing[:20]} / shape-mismatched keys {mismatched[:20]}")
