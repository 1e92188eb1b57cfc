"""Official checkpoints -> our DiT modules (docs/design.md, "Checkpoints, resume and provenance").

`from_official_lightningdit(state_dict, kwargs)` and `from_official_reg(state_dict, kwargs)` take
official key names (as in `tests/fixtures/official`) and the official constructor kwargs, and return our
modules in `eval()` mode. Every official key is mapped or deliberately ignored; unknown or missing
keys raise an error listing them.

`state_dict` may be a plain state dict, a training checkpoint that wraps it, or a file path
(`.pt`/`.pth`/`.safetensors`). Where the EMA weights live in the published files:

* LightningDiT (`hustvl/LightningDiT` and VFM-VAE `tools/preprocess_for_lightningdit/train.py`):
  `{"model": ..., "ema": ..., "opt": ..., "config": ...}`; the released sampling weights are
  `ckpt["ema"]` (the official `sample.py` does `if "ema" in checkpoint: checkpoint = checkpoint["ema"]`).
* REG (`Martinser/REG` / VFM-VAE `tools/preprocess_for_reg/train.py`):
  `{"model": ..., "ema": ..., "opt": ..., "args": Namespace, "steps": int}`; the official
  `sample.py` loads `ckpt["ema"]`.

`unwrap_checkpoint` therefore prefers `"ema"`, then `"model"`, then `"state_dict"`, and strips
DDP (`module.`) and `torch.compile` (`_orig_mod.`) prefixes. REG's `--legacy` key remapping of
old REPA checkpoints is not supported.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmvae.dit.lightningdit import LightningDiT, LightningDiTConfig
from vfmvae.dit.sit_reg import SiTREG, SiTREGConfig

# Official constructor signatures (defaults included) so that omitted kwargs mean what they mean
# upstream, not what our presets say.
OFFICIAL_LIGHTNINGDIT_DEFAULTS: dict[str, Any] = dict(
    input_size=32,
    patch_size=2,
    in_channels=32,
    hidden_size=1152,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=1000,
    learn_sigma=False,
    use_qknorm=False,
    use_swiglu=False,
    use_rope=False,
    use_rmsnorm=False,
    wo_shift=False,
    use_checkpoint=False,
)
OFFICIAL_REG_DEFAULTS: dict[str, Any] = dict(
    path_type="edm",
    input_size=32,
    patch_size=2,
    in_channels=4,
    hidden_size=1152,
    decoder_hidden_size=768,
    encoder_depth=8,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=1000,
    use_cfg=False,
    z_dims=(768,),
    projector_dim=2048,
    cls_token_dim=768,
    fused_attn=True,
    qk_norm=False,
)
# Kwargs that do not change the network function (named so that nothing is dropped silently):
# REG `path_type`/`use_cfg` only matter to the training script, `fused_attn` picks the same
# attention maths (we always use SDPA), and `cls_token_dim` is overwritten by `z_dims[0]` upstream.
REG_IGNORED_KWARGS = ("path_type", "use_cfg", "fused_attn", "cls_token_dim")
# Fixed tables that we recompute instead of loading; the stored copies are compared with ours.
LIGHTNINGDIT_RECOMPUTED = {
    "pos_embed": "pos_embed",
    "feat_rope.freqs_cos": "feat_rope.freqs_cos",
    "feat_rope.freqs_sin": "feat_rope.freqs_sin",
}
REG_RECOMPUTED = {"pos_embed": "pos_embed"}
_WRAPPER_KEYS = ("ema", "model", "state_dict")


def load_checkpoint_file(path: str | Path) -> Mapping[str, Any]:
    """Read a `.safetensors` file or a torch pickle without executing arbitrary code.

    `weights_only=True` with `argparse.Namespace` allow-listed, because REG checkpoints store
    their training `args` as a Namespace.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_checkpoint(obj: Any, prefer: str = "ema") -> dict[str, torch.Tensor]:
    """Plain `{name: tensor}` from a path, a wrapping checkpoint dict or a state dict.

    `prefer` names the wrapper key tried first (`"ema"` for sampling, `"model"` to resume raw weights).
    """
    if isinstance(obj, (str, Path)):
        obj = load_checkpoint_file(obj)
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict, checkpoint dict or file path, got {type(obj).__name__}")
    for key in (prefer, *_WRAPPER_KEYS):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor")
        for prefix in ("module.", "_orig_mod."):
            name = name.removeprefix(prefix)
        state[name] = value
    return state


def _resolve_kwargs(kwargs: Mapping[str, Any], defaults: Mapping[str, Any], model: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"unknown official {model} kwargs {unknown}; known: {sorted(defaults)}")
    return {**defaults, **kwargs}


def _load_mapped(
    model: nn.Module, official: Mapping[str, torch.Tensor], recomputed: Mapping[str, str], label: str
) -> None:
    """Rename official -> ours (identity names here), check recomputed tables, load strictly."""
    ours = model.state_dict()
    buffers = dict(model.named_buffers())
    unknown = sorted(k for k in official if k not in ours and recomputed.get(k) not in buffers)
    missing = sorted(k for k in ours if k not in official)
    if unknown or missing:
        raise KeyError(f"{label} state dict mismatch: unknown official keys {unknown}; missing keys {missing}")
    for off_key, our_key in recomputed.items():
        if off_key not in official:
            continue  # a table the official model would not have (e.g. RoPE off) is simply absent
        stored, computed = official[off_key].float(), buffers[our_key].float()
        if stored.shape != computed.shape:
            raise ValueError(
                f"{label}: stored {off_key!r} has shape {tuple(stored.shape)}, the config gives "
                f"{tuple(computed.shape)} (wrong input_size / patch_size / hidden_size?)"
            )
        if not torch.allclose(stored, computed, atol=1e-5, rtol=0):
            raise ValueError(f"{label}: stored {off_key!r} differs from the recomputed table (config mismatch?)")
    for key, value in official.items():
        if key in ours and value.shape != ours[key].shape:
            raise ValueError(f"{label}: {key!r} has shape {tuple(value.shape)}, model expects {tuple(ours[key].shape)}")
    model.load_state_dict({k: v for k, v in official.items() if k in ours}, strict=True)


def from_official_lightningdit(state_dict: Any, kwargs: Mapping[str, Any]) -> LightningDiT:
    """Our `LightningDiT` from an official `hustvl/LightningDiT` state dict / checkpoint + kwargs."""
    kw = _resolve_kwargs(kwargs, OFFICIAL_LIGHTNINGDIT_DEFAULTS, "LightningDiT")
    use_checkpoint = bool(kw.pop("use_checkpoint"))
    model = LightningDiT(LightningDiTConfig(**kw), activation_checkpointing=use_checkpoint)
    _load_mapped(model, unwrap_checkpoint(state_dict), LIGHTNINGDIT_RECOMPUTED, "LightningDiT")
    return model.eval()


def reg_config_from_official(kwargs: Mapping[str, Any]) -> SiTREGConfig:
    """`SiTREGConfig` from the official REG `SiT(...)` kwargs (see `REG_IGNORED_KWARGS`)."""
    kw = _resolve_kwargs(kwargs, OFFICIAL_REG_DEFAULTS, "REG SiT")
    for name in REG_IGNORED_KWARGS:
        kw.pop(name)
    decoder_hidden = kw.pop("decoder_hidden_size")
    if decoder_hidden != kw["hidden_size"]:
        raise ValueError(
            f"decoder_hidden_size {decoder_hidden} != hidden_size {kw['hidden_size']}: the official final "
            "layer would not accept the block outputs, so such a checkpoint cannot exist"
        )
    kw["z_dims"] = tuple(int(z) for z in kw["z_dims"])
    return SiTREGConfig(**kw)


def from_official_reg(state_dict: Any, kwargs: Mapping[str, Any]) -> SiTREG:
    """Our `SiTREG` from an official REG SiT state dict / checkpoint + kwargs."""
    model = SiTREG(reg_config_from_official(kwargs))
    _load_mapped(model, unwrap_checkpoint(state_dict), REG_RECOMPUTED, "REG SiT")
    return model.eval()
