"""Finding the runs under a folder and loading one run's logs, config, records and checkpoints.

A *run* is a folder holding TensorBoard event files (``events.out.tfevents.*``; Lightning's
``<save_dir>/<name>/<version>``), or a folder holding a CSVLogger ``metrics.csv`` and no event file. Event
files in one folder are one run (a resumed run appends a file); event files in different folders are
different runs, as in TensorBoard. When one training run logs to both (TensorBoard and CSV loggers under
different ``save_dir``, ``configs/logger/csv.yaml``), :func:`same_run` recognises the CSV copy (the same
``loss/*`` tags ending at the same steps with the same values), and the report shows the run once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vfmvae.report.csv_log import CSV_NAME, read_metrics_csv
from vfmvae.report.events import EVENT_GLOB, LoggedImage, event_files, read_event_files
from vfmvae.report.records import Record, find_records, read_record
from vfmvae.report.scalars import ImageAxis, Series, image_axis

__all__ = ["Run", "RunFolder", "find_runs", "load_run", "same_run", "assign_records", "CONFIG_NAMES"]

CONFIG_NAMES = ("config.yaml", "hparams.yaml")  # LightningCLI's resolved config first, the logger's hparams second
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}


@dataclass(frozen=True)
class RunFolder:
    """A folder found by :func:`find_runs` and how it was logged (``"tensorboard"`` or ``"csv"``)."""

    folder: Path
    kind: str


@dataclass
class Run:
    """Everything the report shows about one run (all optional except the folder)."""

    folder: Path
    kind: str
    sources: list[Path]
    scalars: dict[str, Series] = field(default_factory=dict)
    images: dict[str, LoggedImage] = field(default_factory=dict)
    config_path: Path | None = None
    records: list[Record] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    axis: ImageAxis = field(default_factory=lambda: ImageAxis("step"))
    copies: list[Path] = field(default_factory=list)  # folders where another logger wrote the same run

    def tags(self, prefix: str) -> list[str]:
        """Scalar tags starting with ``prefix`` (e.g. ``"loss/"``), sorted."""
        return sorted(t for t in self.scalars if t.startswith(prefix))

    @property
    def last_step(self) -> int | None:
        steps = [s.steps[-1] for s in self.scalars.values() if len(s)]
        return int(max(steps)) if steps else None

    @property
    def duration_s(self) -> float | None:
        """Wall time from the first to the last scalar point (None for CSV runs, which log no time)."""
        walls = [w for s in self.scalars.values() for w in (s.wall_times[0], s.wall_times[-1]) if len(s)]
        walls = [w for w in walls if math.isfinite(w)]
        return max(walls) - min(walls) if len(walls) >= 2 else None


def find_runs(root: Path) -> list[RunFolder]:
    """The runs under ``root`` (``root`` itself included), sorted by path."""
    root = Path(root)
    tensorboard: list[Path] = []
    csv_only: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        here = Path(folder)
        if any(Path(folder, f).match(EVENT_GLOB) for f in files):
            tensorboard.append(here)
        elif CSV_NAME in files:
            csv_only.append(here)
    runs = [RunFolder(p, "tensorboard") for p in tensorboard] + [RunFolder(p, "csv") for p in csv_only]
    return sorted(runs, key=lambda r: r.folder)


def same_run(csv_run: Run, other: Run) -> bool:
    """True when ``csv_run`` is a CSV copy of ``other``: the same ``loss/*`` tags (at least one), each with the
    same number of points, last step and last value (float32 precision, as TensorBoard stores values)."""
    tags = csv_run.tags("loss/")
    if not tags or tags != other.tags("loss/"):
        return False
    for tag in tags:
        a, b = csv_run.scalars[tag], other.scalars[tag]
        if len(a) != len(b) or a.last[0] != b.last[0]:
            return False
        if not np.isclose(a.last[1], b.last[1], rtol=1e-6, atol=0.0, equal_nan=True):
            return False
    return True


def load_run(found: RunFolder, records: list[Path] | None = None) -> Run:
    """Read one run; ``records`` are the JSON record files that belong to it (default: those in its folder tree)."""
    folder = found.folder
    if found.kind == "tensorboard":
        sources = event_files(folder)
        scalars, images = read_event_files(sources)
    else:
        sources = [folder / CSV_NAME]
        scalars, images = read_metrics_csv(sources[0]), {}
    config = next((folder / n for n in CONFIG_NAMES if (folder / n).is_file()), None)
    record_paths = find_records(folder) if records is None else records
    return Run(
        folder=folder,
        kind=found.kind,
        sources=sources,
        scalars=scalars,
        images=images,
        config_path=config,
        records=[r for r in (read_record(p) for p in record_paths) if r is not None],
        checkpoints=sorted(folder.glob("checkpoints/*.ckpt")) + sorted(folder.glob("*.ckpt")),
        axis=image_axis(scalars),
    )


def assign_records(runs: list[RunFolder], root: Path) -> tuple[dict[Path, list[Path]], list[Path]]:
    """Record files under ``root`` -> ``({run folder: [files]}, [files of no run])``: a file belongs to the
    deepest run folder above it."""
    owned: dict[Path, list[Path]] = {r.folder: [] for r in runs}
    loose: list[Path] = []
    for path in find_records(root):
        owners = [r.folder for r in runs if path.is_relative_to(r.folder)]
        if owners:
            owned[max(owners, key=lambda p: len(p.parts))].append(path)
        else:
            loose.append(path)
    return owned, loose
