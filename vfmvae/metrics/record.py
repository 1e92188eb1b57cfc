"""The one JSON record of an evaluation run (`vfmvae evaluate`, `vfmvae eval-reconstruction`).

Every record has the same top-level keys, so results of different runs can be compared and traced
(docs/design.md, "Checkpoints, resume and provenance"):

- ``kind``: ``"adm"`` (gFID/sFID/IS/precision/recall of samples), ``"reconstruction"`` (rFID/rIS/PSNR/SSIM/LPIPS)
  or ``"linear_probe"`` (top-1 of a linear classifier on tokenizer latents, `lightning_modules.linear_probe`);
- ``results``: the metrics, a flat ``{name: number or null}`` (null = not computable, e.g. rIS from fewer than
  10 images; a NaN never reaches the file);
- ``protocol``: how they were computed, including the official tool the run follows;
- ``inputs``: what was evaluated (sample/reference batches, tokenizer weights hash, data folder);
- ``weights``: the frozen feature networks (their fingerprints or file paths);
- ``seconds`` and ``environment`` (torch, numpy, python versions).

The file is written atomically (temporary file + rename), so an interrupted run never leaves half a record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmvae.provenance import to_jsonable

__all__ = ["RECORD_KINDS", "evaluation_record", "write_record"]

log = logging.getLogger(__name__)

RECORD_KINDS = ("adm", "reconstruction", "linear_probe")


def evaluation_record(
    kind: str,
    results: Mapping[str, Any],
    *,
    protocol: Mapping[str, Any],
    inputs: Mapping[str, Any],
    weights: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """A JSON-safe evaluation record (see the module docstring for the keys)."""
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown evaluation record kind {kind!r}; choose one of {RECORD_KINDS}")
    if "follows" not in protocol:
        raise ValueError("an evaluation protocol must say which official tool it follows ('follows' key)")
    return to_jsonable(
        {
            "kind": kind,
            "results": {str(k): _number(v) for k, v in results.items()},
            "protocol": dict(protocol),
            "inputs": dict(inputs),
            "weights": dict(weights),
            "seconds": round(float(seconds), 2),
            "environment": {
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        }
    )


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_record(record: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `record` as indented JSON to `path` (parents created, atomic replace); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    log.info("wrote evaluation record %s", path)
    return path
