"""Training state of a tokenizer stage in plain PyTorch: frozen-network keys, the module's record, legacy formats.

- **Frozen networks are not stored in Lightning checkpoints.** The SigLIP2-L VFM (1.2 GB), the
  discriminator's DINO ViT-S and LPIPS' VGG16 are rebuilt from their files (or, for random test /
  demo networks, from a fixed seed) every run. `drop_frozen_keys` removes them before saving and
  records a sha256 per network; `fill_frozen_keys` puts the current tensors back before loading,
  so `load_state_dict` stays strict for every *other* key, and a changed frozen network is an error
  (docs/design.md, "Checkpoints, resume and provenance").
- **The tokenizer's own record** (`training_record`): counters, guards, every rank's random streams and the
  held-out history, and the stage summary written at the end of a fit. The stage hand-off is `handoff.py`.
- **Checkpoints written before the redesign** keep loading: `legacy_rng_state` turns the old
  single-stream RNG record into the per-rank `vfmvae.utils.rng.RankRNGStream` format, and
  `move_legacy_ema` moves the EMA from the tokenizer's own checkpoint entry to `EMACallback`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmvae.provenance import state_dict_sha256
from vfmvae.utils.distributed import gather_from_ranks

log = logging.getLogger(__name__)

# Keys (in the LightningModule's state dict) of the frozen networks that checkpoints leave out.
FROZEN_PREFIXES: dict[str, str] = {
    "vfm": "tokenizer.vfm.",
    "text": "tokenizer.text_encoder.",  # text tower of a text-conditional decoder
    "dino": "projected_d.dino.",
    "lpips": "lpips.",
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


def training_record(module: Any) -> dict[str, Any]:
    """The tokenizer module's own state for ``checkpoint["tokenizer_training"]`` (not the frozen-network record).

    ``module``: a `TokenizerModule` (``stage``, the image counters, ``guard_g`` / ``guard_d``, ``objective``,
    ``rng``, ``initial_val`` / ``val_history``). Gathers every rank's random streams: call it on every rank.
    """
    return {
        "stage": module.stage,
        "global_nimg": module.global_nimg,
        "stage_nimg": module.stage_nimg,
        "global_batch_size": module.global_batch_size,
        "guard_g": module.guard_g.state_dict(),
        "guard_d": module.guard_d.state_dict(),
        "objective": {"ranks": gather_from_ranks(module.objective.state_dict_extra())},
        "rng": module.rng.state_dict(),
        "initial_val": module.initial_val,
        "val_history": module.val_history,
    }


def restore_training_record(module: Any, record: Mapping[str, Any], world_size: int, rank: int, seed: int) -> None:
    """Put a `training_record` back into ``module`` on rank ``rank`` of ``world_size``; also reads the records
    written before the redesign (one RNG stream, one equivariance-sampler state)."""
    module.global_nimg, module.stage_nimg = int(record["global_nimg"]), int(record["stage_nimg"])
    module.guard_g.load_state_dict(record["guard_g"])
    module.guard_d.load_state_dict(record["guard_d"])
    eq_state = own_rank_state(record["objective"], world_size, rank)
    if eq_state is not None:
        module.objective.load_state_dict_extra(eq_state)
    module.rng.load_state_dict(legacy_rng_state(record["rng"], seed))
    module.initial_val, module.val_history = record.get("initial_val"), list(record.get("val_history", []))


def format_metrics(metrics: Mapping[str, float] | None) -> str:
    """``"psnr 21.3, ssim 0.61, ..."`` of a validation record (``n/a`` when there is none)."""
    if not metrics:
        return "n/a"
    keys = [k for k in ("psnr", "ssim", "lpips", "rfid", "ris") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys)


def fit_summary(module: Any, wall_seconds: float | None) -> dict[str, Any]:
    """``tokenizer_summary.json`` of a finished stage: counters, skipped steps, the held-out reconstruction
    before training and after the last validation, and the PSNR gain between them (``module``: as
    `training_record`'s; ``steps``: its ``global_step``)."""
    initial, history = module.initial_val, module.val_history
    summary = {
        "stage": module.stage,
        "global_nimg": module.global_nimg,
        "stage_nimg": module.stage_nimg,
        "steps": int(module.global_step),
        "skipped_G": module.guard_g.num_skipped,
        "skipped_D": module.guard_d.num_skipped,
        "wall_seconds": wall_seconds,
        "initial_val": initial,
        "final_val": history[-1] if history else None,
    }
    if initial and history:
        summary["psnr_gain_db"] = history[-1]["psnr"] - initial["psnr"]
    return summary


def write_fit_summary(module: Any, log_dir: Path, wall_seconds: float | None) -> dict[str, Any]:
    """Write `fit_summary` to ``<log_dir>/tokenizer_summary.json``; returns it."""
    summary = fit_summary(module, wall_seconds)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "tokenizer_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def export_provenance(module: Any) -> dict[str, Any]:
    """What an export of a trained stage records about its training (``module``: as `training_record`'s)."""
    return {
        "stage": module.stage,
        "stage_name": module.spec.name,
        "global_nimg": module.global_nimg,
        "stage_nimg": module.stage_nimg,
        "steps": int(module.global_step),
        "init_checkpoint": module.hparams.init_checkpoint,
    }


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
    "export_provenance",
    "write_fit_summary",
    "check_resume_record",
    "drop_frozen_keys",
    "fill_frozen_keys",
    "fit_summary",
    "format_metrics",
    "frozen_hashes",
    "frozen_state",
    "legacy_rng_state",
    "move_legacy_ema",
    "own_rank_state",
    "restore_training_record",
    "summary_line",
    "training_record",
]
