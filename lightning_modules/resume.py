"""Which checkpoint a ``fit --ckpt_path ...`` resumes, and what this run changes with respect to it.

* :func:`resolve_resume`: ``last`` = the newest complete checkpoint of the run's checkpoint folders
  (`lightning_modules.run_folders.checkpoint_folders`); an explicit ``last*.ckpt`` that is truncated falls
  back to the newest complete one beside it (said in a log line); any other incomplete file is a one-line
  :class:`ConfigError` that names the newest complete one.
* :func:`argument_changes`: LightningCLI replaces the model's arguments with the checkpoint's hyper-parameters
  on resume, so ``--model.init_args.lr 1e-4`` was silently ignored. The CLI no longer does that: this run's
  values win, and every key whose value differs from the checkpoint's is logged at start, one line per key.
  (The optimiser's own copy of the hyper-parameters, restored with its state, is handled by
  `callbacks.resume_arguments.ResumeArgumentsCallback`.)

The checkpoint is read with ``weights_only=True`` and memory-mapped (`vfmvae.utils.safe_load`): its
hyper-parameters are read without reading the tensors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lightning_modules.config_errors import ConfigError
from lightning_modules.run_folders import checkpoint_folders
from vfmvae.utils.checkpoint_files import checkpoint_problem, newest_complete_checkpoint
from vfmvae.utils.safe_load import UserFileError, load_user_file

__all__ = ["ResumeDecision", "argument_changes", "read_checkpoint_header", "resolve_resume"]

_LIGHTNING_SPECIAL = ("best", "hpc")  # ckpt_path values Lightning resolves itself


@dataclasses.dataclass
class ResumeDecision:
    """The checkpoint to resume (None = a fresh run) and the lines to log about the choice."""

    checkpoint: str | None
    notes: list[str] = dataclasses.field(default_factory=list)


def resolve_resume(ckpt_path: str | None, config: dict[str, Any]) -> ResumeDecision:
    """The checkpoint ``--ckpt_path`` means for the fit ``config`` (a plain dict); see the module docstring."""
    if not ckpt_path or ckpt_path in _LIGHTNING_SPECIAL or "://" in str(ckpt_path):
        return ResumeDecision(ckpt_path or None)
    if ckpt_path == "last":
        folders = checkpoint_folders(config)
        found, skipped = newest_complete_checkpoint(folders)
        notes = [f"--ckpt_path last: skipped {path}: {problem}" for path, problem in skipped]
        if found is None:
            where = ", ".join(str(f) for f in folders) or "the run folder"
            return ResumeDecision(None, [*notes, f"--ckpt_path last: no complete checkpoint in {where}: a new run"])
        return ResumeDecision(str(found), [*notes, f"--ckpt_path last: resuming {found}"])
    path = Path(ckpt_path)
    problem = checkpoint_problem(path)
    if problem is None:
        return ResumeDecision(str(path))
    if problem == "missing":
        raise ConfigError(f"config error at ckpt_path: checkpoint not found: {path}")
    found, _ = newest_complete_checkpoint([path.parent])
    if path.name.startswith("last") and found is not None:
        return ResumeDecision(str(found), [f"{path} is {problem}: resuming the newest complete checkpoint {found}"])
    hint = f"; the newest complete checkpoint there is {found}" if found else ""
    raise ConfigError(f"config error at ckpt_path: {path} is {problem}{hint}")


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's entries other than tensors' data (memory-mapped, ``weights_only``); a folder's ``meta.pt``."""
    path = Path(path)
    file = path / "meta.pt" if path.is_dir() else path
    try:
        loaded = load_user_file(file, what="checkpoint", mmap=True)
    except UserFileError as err:
        raise ConfigError(f"config error at ckpt_path: {err}") from err
    return loaded if isinstance(loaded, dict) else {}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def argument_changes(saved: dict[str, Any], spec: dict[str, Any], prefix: str) -> list[tuple[str, Any, Any]]:
    """``[(key, checkpoint value, this run's value)]`` for every argument that differs.

    Args:
        saved: the checkpoint's ``hyper_parameters`` (``_class_path`` + the constructor's arguments).
        spec: this run's ``{"class_path": ..., "init_args": {...}}`` (plain dict).
        prefix: the config key of ``spec`` (``"model"``, ``"data"``).
    Keys present on one side only are reported with ``"(absent)"`` on the other.
    """
    changes: list[tuple[str, Any, Any]] = []
    old_class, new_class = saved.get("_class_path"), spec.get("class_path")
    if old_class and new_class and old_class != new_class:
        changes.append((f"{prefix}.class_path", old_class, new_class))
    old = _flat({k: v for k, v in saved.items() if not k.startswith("_")}, f"{prefix}.init_args")
    new = _flat(spec.get("init_args") or {}, f"{prefix}.init_args")
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a != b:
            changes.append((key, a, b))
    return changes
