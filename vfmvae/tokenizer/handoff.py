"""The stage hand-off (`TokenizerModule`'s ``init_checkpoint``; docs/design.md, "Tokenizer stages and losses").

A new stage starts from the previous stage's Lightning checkpoint: its weights, EMA and global image counter,
with fresh optimisers unless asked otherwise (as officially). Missing and unexpected keys are reported
(`HandoffReport`); those explained by the stage plan (the VF projection dropped after stage 1, the PatchGAN new
in stage 3) are listed as such, anything else is an error unless ``strict=False``. `merge_ema_state` carries
the previous EMA over name by name; `checkpoint_ema_state` finds it where `callbacks.ema.EMACallback` keeps it,
or, in a checkpoint written before the redesign, inside the tokenizer's own entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .training_state import fill_frozen_keys

# Differences between consecutive stages that the stage plan explains.
EXPLAINED_MISSING = {r"^patchgan\.": "PatchGAN discriminator is new in stage 3"}
EXPLAINED_UNEXPECTED = {
    r"^tokenizer\.head\.vf_projection\.": "VF projection (linear_proj) exists only in stages 0-1 (official strict=False drop)",
    r"^patchgan\.": "PatchGAN discriminator is not used in this stage",
}


def _explain(key: str, table: Mapping[str, str]) -> str | None:
    return next((why for pattern, why in table.items() if re.search(pattern, key)), None)


@dataclass
class HandoffReport:
    """Outcome of loading the previous stage: keys that did not match, explained or not."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    explained: dict[str, str] = field(default_factory=dict)
    ema_initialised_from_weights: list[str] = field(default_factory=list)
    ema_dropped: list[str] = field(default_factory=list)
    global_nimg: int = 0
    previous_stage: int | None = None
    optimizers_kept: bool = False

    @property
    def unexplained(self) -> list[str]:
        return [k for k in self.missing + self.unexpected if k not in self.explained]

    def summary(self) -> str:
        lines = [f"stage hand-off from {self.source} (stage {self.previous_stage}, global images {self.global_nimg})"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            for k in keys:
                lines.append(
                    f"  {title}: {k}" + (f"  [{self.explained[k]}]" if k in self.explained else "  [UNEXPLAINED]")
                )
        if self.ema_initialised_from_weights:
            lines.append(f"  EMA initialised from the weights for {len(self.ema_initialised_from_weights)} tensors")
        if self.ema_dropped:
            lines.append(
                f"  EMA values dropped for {len(self.ema_dropped)} tensors no longer trained (raw weights kept)"
            )
        lines.append(f"  optimisers: {'kept' if self.optimizers_kept else 'fresh (paper)'}")
        return "\n".join(lines)


def _collapse(keys: Iterable[str], depth: int = 4) -> list[str]:
    """Group keys by their first `depth` name parts so a report stays readable."""
    return sorted({".".join(k.split(".")[:depth]) + (".*" if k.count(".") >= depth else "") for k in keys})


def compare_state_dicts(own: Iterable[str], loaded: Iterable[str], source: str) -> HandoffReport:
    own, loaded = set(own), set(loaded)
    report = HandoffReport(source=source, missing=_collapse(own - loaded), unexpected=_collapse(loaded - own))
    for key in report.missing:
        why = _explain(key, EXPLAINED_MISSING)
        if why:
            report.explained[key] = why
    for key in report.unexpected:
        why = _explain(key, EXPLAINED_UNEXPECTED)
        if why:
            report.explained[key] = why
    return report


def merge_ema_state(saved: Mapping[str, Any], current: Mapping[str, Any], report: HandoffReport) -> dict[str, Any]:
    """EMA state for this stage's tracked tensors from the previous stage's EMA, name by name.

    Tracked names missing from the old EMA keep the current (weight-initialised) shadow; old names
    no longer tracked are dropped (the parts a stage freezes keep their raw weights, which is where
    the official G_ema of frozen parts converges to within the stage).
    """
    merged = {k: v for k, v in current.items() if k not in ("params", "buffers")}
    merged["num_updates"] = int(saved.get("num_updates", 0))
    merged["nimg"] = int(saved.get("nimg", 0))
    for kind in ("params", "buffers"):
        old, new = saved.get(kind, {}), current[kind]
        merged[kind] = {
            n: (old[n] if n in old and tuple(old[n].shape) == tuple(t.shape) else t) for n, t in new.items()
        }
        report.ema_initialised_from_weights += [n for n in new if n not in old]
        report.ema_dropped += [n for n in old if n not in new]
    return merged


@dataclass
class Handoff:
    """What `read_previous_stage` takes from the previous stage's checkpoint."""

    state: dict[str, torch.Tensor]  # weights to load (strict=False), frozen networks filled in
    report: HandoffReport
    ema: dict[str, Any] | None  # the previous EMA state, to merge with `merge_ema_state`
    optimizer_states: list[dict] | None  # only with keep_optimizers


def read_previous_stage(
    path: str,
    module: nn.Module,
    hashes: Mapping[str, str],
    module_key: str,
    train_mode: str,
    strict: bool = True,
    keep_optimizers: bool = False,
) -> Handoff:
    """Read a previous stage's Lightning checkpoint for the stage hand-off (see the module docstring).

    ``module``: the LightningModule of the new stage (its state-dict keys are compared with the checkpoint's);
    ``module_key``: the checkpoint entry of its training state; ``train_mode``: the new stage's trainable set.
    """
    from vfmvae.utils.safe_load import load_user_file

    from .stages import get_stage

    ckpt = load_user_file(path, what="previous-stage checkpoint")  # weights_only: no code runs from the file
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint of TokenizerModule (no 'state_dict')")
    state = dict(ckpt["state_dict"])
    extra = ckpt.get(module_key, {})
    fill_frozen_keys(state, module, extra.get("frozen"), hashes)
    own = module.state_dict()
    report = compare_state_dicts(own.keys(), state.keys(), str(path))
    report.previous_stage = extra.get("stage")
    report.global_nimg = int(extra.get("global_nimg", 0))
    if report.unexplained and strict:
        raise KeyError(
            f"stage hand-off: unexplained key differences (init_strict=False to accept):\n{report.summary()}"
        )
    optimizer_states = None
    if keep_optimizers:
        previous = extra.get("stage")
        if previous is not None and get_stage(previous).train_mode != train_mode:
            raise ValueError(
                f"init_keep_optimizers: stage {previous} trained a different parameter set "
                f"({get_stage(previous).train_mode} vs {train_mode})"
            )
        optimizer_states = ckpt["optimizer_states"]
        report.optimizers_kept = True
    weights = {k: v for k, v in state.items() if k in own}
    return Handoff(weights, report, checkpoint_ema_state(ckpt, module_key), optimizer_states)


EMA_CALLBACK_KEY = "EMACallback"  # the checkpoint entry of `callbacks.ema.EMACallback` (its state_key)


def checkpoint_ema_state(checkpoint: Mapping[str, Any], module_key: str) -> dict[str, Any] | None:
    """The EMA state of a Lightning checkpoint: the EMA callback's entry, or (a checkpoint written before
    the redesign) ``checkpoint[module_key]["ema"]``, where the tokenizer kept it; ``None`` when neither exists."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith(EMA_CALLBACK_KEY) and isinstance(state, Mapping) and state.get("ema"):
            return dict(state["ema"])
    legacy = (checkpoint.get(module_key) or {}).get("ema")
    return None if legacy is None else dict(legacy)


__all__ = [
    "EMA_CALLBACK_KEY",
    "Handoff",
    "HandoffReport",
    "checkpoint_ema_state",
    "compare_state_dicts",
    "merge_ema_state",
    "read_previous_stage",
]
