"""Training state of the tokenizer stages in plain PyTorch: frozen-network keys, stage hand-off, legacy formats.

- **Frozen networks are not stored in Lightning checkpoints.** The SigLIP2-L VFM (1.2 GB), the
  discriminator's DINO ViT-S and LPIPS' VGG16 are rebuilt from their files (or, for random test /
  demo networks, from a fixed seed) every run. `drop_frozen_keys` removes them before saving and
  records a sha256 per network; `fill_frozen_keys` puts the current tensors back before loading,
  so `load_state_dict` stays strict for every *other* key, and a changed frozen network is an error
  (docs/design.md, "Checkpoints, resume and provenance").
- **Stage hand-off**: weights, EMA and the global image counter of the previous stage's checkpoint;
  fresh optimisers unless asked otherwise (fresh Adam per stage, as officially). Missing and unexpected
  keys are reported (`HandoffReport`); those explained by the stage plan (the VF projection dropped
  after stage 1, the PatchGAN new in stage 3) are listed as such, anything else is an error unless
  `strict=False`. `merge_ema_state` carries the previous EMA over name by name.
- **Checkpoints written before the redesign** keep loading: `legacy_rng_state` turns the old
  single-stream RNG record into the per-rank `vfmvae.utils.rng.RankRNGStream` format, and
  `previous_stage_ema` finds the EMA both where `callbacks.ema.EMACallback` stores it now and inside
  the tokenizer's own checkpoint entry, where it used to live.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vfmvae.provenance import state_dict_sha256

log = logging.getLogger(__name__)

# Keys (in the LightningModule's state dict) of the frozen networks that checkpoints leave out.
FROZEN_PREFIXES: dict[str, str] = {
    "vfm": "tokenizer.vfm.",
    "dino": "projected_d.dino.",
    "lpips": "lpips.",
}
# Differences between consecutive stages that the stage plan explains.
EXPLAINED_MISSING = {r"^patchgan\.": "PatchGAN discriminator is new in stage 3"}
EXPLAINED_UNEXPECTED = {
    r"^tokenizer\.head\.vf_projection\.": "VF projection (linear_proj) exists only in stages 0-1 (official strict=False drop)",
    r"^patchgan\.": "PatchGAN discriminator is not used in this stage",
}


def frozen_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}


def drop_frozen_keys(state_dict: dict[str, torch.Tensor], hashes: Mapping[str, str]) -> dict[str, Any]:
    """Remove frozen-network tensors in place; returns the record stored next to them."""
    record = {}
    for name, prefix in FROZEN_PREFIXES.items():
        keys = [k for k in state_dict if k.startswith(prefix)]
        if keys:
            for k in keys:
                del state_dict[k]
            record[name] = {"prefix": prefix, "num_tensors": len(keys), "sha256": hashes.get(name)}
    return record


def fill_frozen_keys(
    state_dict: dict[str, torch.Tensor], module: nn.Module, record: Mapping[str, Any] | None, hashes: Mapping[str, str]
) -> None:
    """Put the current frozen-network tensors into a loaded state dict (in place), checking their hash."""
    current = module.state_dict()
    for name, prefix in FROZEN_PREFIXES.items():
        keys = [k for k in current if k.startswith(prefix)]
        if not keys or any(k in state_dict for k in keys):
            continue  # an old-style checkpoint that still holds the tensors loads them as they are
        saved = (record or {}).get(name, {}).get("sha256")
        if saved is not None and hashes.get(name) is not None and saved != hashes[name]:
            raise ValueError(
                f"the frozen {name} network differs from the one this checkpoint was trained with "
                f"(sha256 {hashes[name][:12]} vs {saved[:12]}): point the run at the same weights file"
            )
        for k in keys:
            state_dict[k] = current[k]


def frozen_hashes(module: nn.Module) -> dict[str, str]:
    """sha256 of each frozen network present in `module` (computed once per run)."""
    out = {}
    for name, prefix in FROZEN_PREFIXES.items():
        state = frozen_state(module, prefix)
        if state:
            out[name] = state_dict_sha256(state)
    return out


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
    from .stages import get_stage

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in ckpt:
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


def own_rank_state(state: Mapping[str, Any], world_size: int, rank: int) -> Mapping[str, Any] | None:
    """This rank's entry of a per-rank record ``{"ranks": [...]}`` (a bare record = one rank, written before the
    redesign); ``None`` when the record was written by another number of ranks (the caller keeps its fresh state)."""
    ranks = state["ranks"] if "ranks" in state else [state]
    if len(ranks) != world_size:
        log.warning(
            "per-rank state saved by %d ranks, this run has %d: each rank keeps its fresh stream (resume is not bitwise)",
            len(ranks),
            world_size,
        )
        return None
    return ranks[rank]


EMA_CALLBACK_KEY = "EMACallback"  # the checkpoint entry of `callbacks.ema.EMACallback` (its state_key)


def checkpoint_ema_state(checkpoint: Mapping[str, Any], module_key: str) -> dict[str, Any] | None:
    """The EMA state of a Lightning checkpoint: the EMA callback's entry, or (a checkpoint written before
    the redesign) ``checkpoint[module_key]["ema"]``, where the tokenizer kept it; ``None`` when neither exists."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith(EMA_CALLBACK_KEY) and isinstance(state, Mapping) and state.get("ema"):
            return dict(state["ema"])
    legacy = (checkpoint.get(module_key) or {}).get("ema")
    return None if legacy is None else dict(legacy)


def check_resume_record(record: Mapping[str, Any] | None, stage: int, module_key: str) -> Mapping[str, Any]:
    """The tokenizer record of a checkpoint given to ``--ckpt_path``, refused with a hint when it cannot resume ``stage``."""
    if record is None:
        raise KeyError(
            f"checkpoint lacks the TokenizerModule state ({module_key!r}); "
            "for a previous stage use model.init_checkpoint instead of --ckpt_path"
        )
    if int(record["stage"]) != stage:
        raise ValueError(
            f"--ckpt_path resumes a stage-{record['stage']} run but this is stage {stage}; "
            "start a new stage with model.init_checkpoint"
        )
    return record


def move_legacy_ema(checkpoint: dict[str, Any], module_key: str, callback_key: str) -> None:
    """A checkpoint written before the redesign keeps the EMA in ``checkpoint[module_key]["ema"]``: put it where
    `callbacks.ema.EMACallback` restores it from, ``checkpoint["callbacks"][callback_key]`` (in place)."""
    legacy = (checkpoint.get(module_key) or {}).get("ema")
    callbacks = checkpoint.setdefault("callbacks", {})
    if legacy is not None and callback_key not in callbacks:
        callbacks[callback_key] = {"ema": legacy}


def legacy_rng_state(state: Mapping[str, Any], seed: int) -> Mapping[str, Any]:
    """A tokenizer RNG record in the `vfmvae.utils.rng.RankRNGStream` format.

    Checkpoints written before the redesign hold one stream ``{seed, cpu, cuda}`` (the saving rank's,
    seeded ``seed * world + rank``): it becomes a one-rank record with the run's base ``seed``, which a
    one-process resume continues exactly (``seed * 1 + 0 == seed``); a multi-rank resume of such a
    checkpoint cannot be exact (the other ranks' streams were never saved) and is reseeded with a warning.
    """
    if "ranks" in state:
        return state
    return {"seed": int(seed), "world_size": 1, "ranks": [{"cpu": state["cpu"], "cuda": state.get("cuda")}]}


def format_metrics(metrics: Mapping[str, float] | None) -> str:
    """``"psnr 21.3, ssim 0.61, ..."`` of a validation record (``n/a`` when there is none)."""
    if not metrics:
        return "n/a"
    keys = [k for k in ("psnr", "ssim", "lpips", "rfid", "ris") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys)


def fit_summary(
    counters: Mapping[str, Any], initial_val: Mapping[str, float] | None, val_history: list[Mapping[str, float]]
) -> dict[str, Any]:
    """``tokenizer_summary.json`` of a finished stage: the ``counters`` given, the held-out reconstruction
    before training and after the last validation, and the PSNR gain between them."""
    summary = {**counters, "initial_val": initial_val, "final_val": val_history[-1] if val_history else None}
    if initial_val and val_history:
        summary["psnr_gain_db"] = val_history[-1]["psnr"] - initial_val["psnr"]
    return summary


def summary_line(summary: Mapping[str, Any]) -> str:
    """One line for the console at the end of a stage."""
    gain = f" (PSNR {summary['psnr_gain_db']:+.2f} dB)" if "psnr_gain_db" in summary else ""
    return (
        f"tokenizer stage {summary['stage']}: {summary['steps']} steps, {summary['global_nimg']} images in total, "
        f"wall {summary['wall_seconds']} s; held-out {format_metrics(summary['initial_val'])} -> "
        f"{format_metrics(summary['final_val'])}{gain}"
    )


__all__ = [
    "FROZEN_PREFIXES",
    "EMA_CALLBACK_KEY",
    "Handoff",
    "HandoffReport",
    "check_resume_record",
    "checkpoint_ema_state",
    "compare_state_dicts",
    "drop_frozen_keys",
    "fill_frozen_keys",
    "fit_summary",
    "format_metrics",
    "frozen_hashes",
    "legacy_rng_state",
    "merge_ema_state",
    "move_legacy_ema",
    "own_rank_state",
    "read_previous_stage",
    "summary_line",
]
