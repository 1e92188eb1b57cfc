"""Reading a run logged by Lightning's ``CSVLogger`` (``<save_dir>/<name>/<version>/metrics.csv``).

The file has one column per logged key plus ``step`` (and ``epoch``); a row holds the keys logged together,
the other cells are empty. A resumed CSV logger appends to the same file, so rows can go back in step: the
resume rule of :mod:`vfmvae.report.scalars` applies per tag. CSV files carry no images.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from vfmvae.report.scalars import Series

__all__ = ["CSV_NAME", "read_metrics_csv"]

CSV_NAME = "metrics.csv"


def _number(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def read_metrics_csv(path: Path) -> dict[str, Series]:
    """``{tag: Series}`` from a ``metrics.csv``; rows without a ``step`` cell use their row index (no wall time).

    Raises ``ValueError`` naming the file when it has no header.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ValueError(f"{path} has no header row; is it a Lightning CSVLogger metrics.csv?")
        points: dict[str, list[tuple[int, float, float]]] = {}
        for index, row in enumerate(reader):
            step = _number(row.get("step"))
            step = index if step is None or not math.isfinite(step) else int(step)
            for key, cell in row.items():
                if key in (None, "step"):
                    continue
                value = _number(cell)
                if value is not None:
                    points.setdefault(key, []).append((step, value, math.nan))
    return {tag: Series.from_points(p) for tag, p in sorted(points.items())}
