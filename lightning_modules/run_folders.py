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

These functions read the config as a plain ``dict`` (``config.as_dict()``) and return decisions; the CLI
applies them. Only TensorBoard and CSV loggers have version folders; others (W&B, MLflow) keep their own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LoggerFolder",
    "checkpoint_folders",
    "explicit_checkpoint_dirs",
    "claim_fresh_version",
    "logger_folders",
    "run_folder_of_checkpoint",
]

_VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")


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
        if not str(spec.get("class_path", "")).endswith(_VERSIONED_LOGGERS):
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
        if isinstance(spec, dict) and str(spec.get("class_path", "")).endswith("ModelCheckpoint"):
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
