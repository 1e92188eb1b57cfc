"""One folder per run: a fresh ``fit`` gets its own version folder, a resumed one writes into its checkpoint's.

The run YAMLs name their TensorBoard/CSV folder with a fixed ``version:`` (``<save_dir>/<name>/<version>``,
`callbacks/tb_layout.py`), so before this a second ``fit`` of the same YAML wrote into the first run's folder:
its ``config.yaml`` replaced, event files of two runs mixed, ``-v1`` checkpoints beside the first run's. Now
(docs/design.md, "Checkpoints, resume and provenance"):

* a fresh ``fit`` whose folder already holds anything writes to ``<version>-1`` (``-2``, ...: the first free
  suffix; two runs of one YAML started in the same second may still pick the same one);
* ``--ckpt_path FILE`` writes into the run folder the checkpoint lives in (``<run>/checkpoints/FILE``);
* ``--ckpt_path last`` resumes the newest complete checkpoint of the configured run folder and its ``-k``
  siblings (`vfmvae.utils.checkpoint_files.newest_complete_checkpoint`); with none it starts a fresh run.

Resuming (:func:`resolve_resume`, :func:`argument_changes`): an explicit ``last*.ckpt`` that is truncated falls
back to the newest complete checkpoint beside it (said in a log line); any other incomplete file is a one-line
:class:`ConfigError` naming the newest complete one. LightningCLI replaced the model's arguments with the
checkpoint's hyper-parameters on resume, so ``--model.init_args.lr 1e-4`` was silently ignored; the CLI no
longer does that: this run's values win, and every key whose value differs from the checkpoint's is logged at
start, one line per key (the optimiser's own restored copy is handled by
`callbacks.resume_arguments.ResumeArgumentsCallback`). The checkpoint is read with ``weights_only=True`` and
memory-mapped (`vfmvae.utils.safe_load`): its hyper-parameters without reading the tensors.

These functions read the config as a plain ``dict`` (``config.as_dict()``) and return decisions; the CLI
applies them. Only TensorBoard and CSV loggers (and their subclasses) have version folders; others (W&B,
MLflow) keep their own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_modules.config_errors import ConfigError, resolve_class
from vfmvae.utils.checkpoint_files import checkpoint_problem, newest_complete_checkpoint
from vfmvae.utils.safe_load import UserFileError, load_user_file

__all__ = [
    "LoggerFolder",
    "ResumeDecision",
    "argument_changes",
    "checkpoint_folders",
    "claim_fresh_version",
    "explicit_checkpoint_dirs",
    "logger_folders",
    "read_checkpoint_header",
    "resolve_resume",
    "run_folder_of_checkpoint",
]

_VERSIONED_LOGGERS = (TensorBoardLogger, CSVLogger)
_LIGHTNING_SPECIAL = ("best", "hpc")  # ckpt_path values Lightning resolves itself


def _is_subclass_spec(spec: dict[str, Any], classes: tuple[type, ...]) -> bool:
    cls = resolve_class(spec.get("class_path"))
    return isinstance(cls, type) and issubclass(cls, classes)


@dataclasses.dataclass
class LoggerFolder:
    """A TensorBoard/CSV logger of the config: its position in ``trainer.logger`` and its folder arguments."""

    index: int | None  # position in a list of loggers; None when ``trainer.logger`` is one spec
    save_dir: str
    name: str | None
    version: str | int | None

    @property
    def root(self) -> Path:
        """``<save_dir>/<name>`` (Lightning leaves the name out when it is empty)."""
        return Path(self.save_dir) / self.name if self.name else Path(self.save_dir)

    @property
    def version_name(self) -> str | None:
        """The folder name Lightning uses for ``version`` (an int ``n`` is ``version_n``)."""
        if self.version is None:
            return None
        return self.version if isinstance(self.version, str) else f"version_{self.version}"

    def run_folders(self) -> list[Path]:
        """The configured run folder and its ``-k`` siblings (any version folder when the version is automatic)."""
        if not self.root.is_dir():
            return []
        base = self.version_name
        if base is None:
            return sorted(p for p in self.root.iterdir() if p.is_dir())
        siblings = [p for p in self.root.glob(f"{base}-*") if p.is_dir() and p.name[len(base) + 1 :].isdigit()]
        return ([self.root / base] if (self.root / base).is_dir() else []) + sorted(siblings)


def _logger_specs(trainer: dict[str, Any]) -> Iterator[tuple[int | None, dict[str, Any]]]:
    specs = trainer.get("logger")
    if isinstance(specs, dict):
        yield None, specs
    elif isinstance(specs, list):
        for i, spec in enumerate(specs):
            if isinstance(spec, dict):
                yield i, spec


def logger_folders(config: dict[str, Any]) -> list[LoggerFolder]:
    """The config's TensorBoard/CSV loggers, in ``trainer.logger`` order (the first one is ``trainer.log_dir``)."""
    trainer = config.get("trainer") or {}
    folders = []
    for index, spec in _logger_specs(trainer):
        if not _is_subclass_spec(spec, _VERSIONED_LOGGERS):
            continue
        args = spec.get("init_args") or {}
        save_dir = args.get("save_dir") or trainer.get("default_root_dir") or os.getcwd()
        folders.append(LoggerFolder(index, str(save_dir), args.get("name"), args.get("version")))
    return folders


def explicit_checkpoint_dirs(config: dict[str, Any]) -> list[Path]:
    dirs = []
    policy = config.get("checkpoint") or {}
    if policy.get("dirpath"):
        dirs.append(Path(policy["dirpath"]))
    for spec in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(spec, dict) and _is_subclass_spec(spec, (ModelCheckpoint,)):
            dirpath = (spec.get("init_args") or {}).get("dirpath")
            if dirpath:
                dirs.append(Path(dirpath))
    return dirs


def checkpoint_folders(config: dict[str, Any]) -> list[Path]:
    """Where this config's runs keep checkpoints: explicit ``dirpath``s, else ``<run folder>/checkpoints``."""
    explicit = explicit_checkpoint_dirs(config)
    if explicit:
        return explicit
    folders = logger_folders(config)
    if folders:
        return [run / "checkpoints" for run in folders[0].run_folders()]
    trainer = config.get("trainer") or {}
    return [Path(trainer.get("default_root_dir") or os.getcwd()) / "checkpoints"]


def run_folder_of_checkpoint(checkpoint: str | os.PathLike) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<file>``; None for a checkpoint kept anywhere else."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def claim_fresh_version(folder: LoggerFolder) -> str | None:
    """A version for a fresh run of ``folder``'s logger: None = keep the configured one (free or automatic).

    A folder is free when it does not exist or is empty (a run that failed before writing anything leaves
    nothing behind that a later run would skip); otherwise the first free ``<version>-k`` is returned.
    """
    base = folder.version_name
    if base is None:
        return None  # Lightning's automatic version_N is a new folder already
    if _free(folder.root / base):
        return None
    k = 1
    while not _free(folder.root / f"{base}-{k}"):
        k += 1
    return f"{base}-{k}"


def _free(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


# ------------------------------------------------------------------------------------------- resume
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
