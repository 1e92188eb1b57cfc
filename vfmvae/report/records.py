"""Metric records written as JSON next to a run: evaluation results, summaries, the demo's ``metrics.json``.

Which files count (by name, case-insensitive): ``metrics*.json``, ``results*.json``, ``*summary*.json``,
``*eval*.json``, ``*_adm.json`` (``vfmvae evaluate``), ``*reconstruction*.json``
(``vfmvae eval-reconstruction``). A record is flattened to ``dotted.key -> value`` rows (numbers, booleans,
short strings and short lists of numbers); anything else is left out, so a record never breaks the page.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RECORD_PATTERNS", "Record", "find_records", "flatten", "read_record"]

log = logging.getLogger(__name__)

RECORD_PATTERNS = (
    "metrics*.json",
    "results*.json",
    "*summary*.json",
    "*eval*.json",
    "*_adm.json",
    "*reconstruction*.json",
)
_SKIP_DIRS = {"checkpoints", "latents", "chunks", "samples", "__pycache__"}
_MAX_BYTES = 2_000_000  # a JSON file larger than this is data, not a record
_MAX_ROWS = 300
_MAX_STRING = 120


@dataclass(frozen=True)
class Record:
    """One JSON record: its path and the flattened ``[(key, value text), ...]`` rows (at most 300)."""

    path: Path
    rows: list[tuple[str, str]]
    truncated: int = 0


def _format(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_STRING else value[: _MAX_STRING - 3] + "..."
    if value is None:
        return "null"
    return None


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts/lists -> ``[("a.b.0", "1.5"), ...]``; lists of <= 8 scalars stay on one row."""
    if isinstance(obj, dict):
        rows: list[tuple[str, str]] = []
        for key, value in obj.items():
            rows += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(obj, list):
        texts = [_format(v) for v in obj]
        if len(obj) <= 8 and all(t is not None for t in texts):
            return [(prefix, "[" + ", ".join(texts) + "]")]
        rows = []
        for i, value in enumerate(obj[:50]):
            rows += flatten(value, f"{prefix}.{i}")
        return rows
    text = _format(obj)
    return [(prefix or "(value)", text)] if text is not None else []


def _is_record(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(".json") and any(fnmatch.fnmatch(lower, p) for p in RECORD_PATTERNS)


def find_records(root: Path, max_depth: int = 6) -> list[Path]:
    """Record files under ``root`` (hidden folders, checkpoints, latent caches and sample folders skipped)."""
    root = Path(root)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS and depth < max_depth)
        found += [Path(folder) / f for f in sorted(files) if _is_record(f)]
    return found


def read_record(path: Path) -> Record | None:
    """The flattened record, or None (with a warning) for a file that is too large or not JSON."""
    try:
        if path.stat().st_size > _MAX_BYTES:
            log.warning("%s is over %d bytes; not shown as a metrics record", path, _MAX_BYTES)
            return None
        rows = flatten(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        log.warning("%s is not a readable JSON record (%s); not shown", path, err)
        return None
    return Record(path, rows[:_MAX_ROWS], max(0, len(rows) - _MAX_ROWS))
