"""The component-ablation table (docs/analyses.md, "Component ablation"): the user's results per row, side
by side with the paper's, plus each row's decoder and encoder-head size.

A row's results come from evaluation records (`vfmvae.metrics.record`: ``kind`` ``reconstruction`` gives
rFID / PSNR / SSIM / LPIPS, ``adm`` gives gFID) or from evaluating an exported tokenizer here
(:func:`evaluate_reconstruction`, the official reconstruction protocol on a folder of images with any
Inception-like feature extractor; docs/design.md, "Evaluation protocol").

The paper's numbers (:data:`PAPER_ABLATION`) are None where they could not be read from the sources this
repository was built from (see docs/analyses.md); the table prints ``n/a`` for them and a user can pass
the values with ``--paper FILE``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmvae.codec import uint8_to_unit
from vfmvae.tokenizer.ablation import ABLATION_ROWS, ROW_TITLES, ablation_config
from vfmvae.tokenizer.config import VFMVAEConfig, get_config

from .reconstruction import ReconstructionMetrics

# (key, column title, lower is better)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("rfid", "rFID", True),
    ("psnr", "PSNR", False),
    ("ssim", "SSIM", False),
    ("lpips", "LPIPS", True),
    ("gfid", "gFID", True),
)
METRIC_KEYS = tuple(k for k, _, _ in METRICS)

# The paper's ablation table (5 M images, weak alignment). Not retrievable here: None = unknown.
PAPER_ABLATION: dict[str, dict[str, float | None]] = {row: {k: None for k in METRIC_KEYS} for row in ABLATION_ROWS}


def results_from_record(record: Mapping[str, Any], source: str = "record") -> dict[str, float | None]:
    """The table's metrics in one evaluation record (``reconstruction``: rfid/psnr/ssim/lpips; ``adm``: gfid)."""
    kind = record.get("kind") if isinstance(record, Mapping) else None
    results = record.get("results") if isinstance(record, Mapping) else None
    if kind not in ("reconstruction", "adm") or not isinstance(results, Mapping):
        raise ValueError(
            f"{source} is not an evaluation record (expected a JSON object with kind 'reconstruction' or 'adm' "
            "and 'results', as written by `make eval-reconstruction` / `make evaluate`)"
        )
    if kind == "adm":
        return {"gfid": results.get("fid")}
    return {k: results.get(k) for k in ("rfid", "psnr", "ssim", "lpips") if k in results}


def read_record(path: str | Path) -> dict[str, float | None]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"evaluation record not found: {p}")
    try:
        record = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not JSON ({e.msg} at line {e.lineno})") from None
    return results_from_record(record, str(p))


def read_paper_numbers(path: str | Path) -> dict[str, dict[str, float | None]]:
    """A YAML/JSON file ``{row: {metric: value}}`` overriding :data:`PAPER_ABLATION` (unknown names refused)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    rows = data.get("rows", data)
    out = {row: dict(values) for row, values in PAPER_ABLATION.items()}
    for row, values in rows.items():
        if row not in out:
            raise ValueError(f"{path}: unknown ablation row {row!r}; rows: {list(ABLATION_ROWS)}")
        unknown = sorted(set(values or {}) - set(METRIC_KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown metrics {unknown} for row {row!r}; metrics: {list(METRIC_KEYS)}")
        out[row].update({k: None if v is None else float(v) for k, v in (values or {}).items()})
    return out


def row_sizes(base: VFMVAEConfig | str = "vfmvae-f16d32-siglip2") -> dict[str, dict[str, int]]:
    """Trainable parameters per row: ``{"decoder": n, "head": n}``, counted on the ``meta`` device (no memory)."""
    from vfmvae.tokenizer.decoder import Decoder
    from vfmvae.tokenizer.latent_head import LatentHead

    base = get_config(base) if isinstance(base, str) else base
    out = {}
    with torch.device("meta"):
        for row in ABLATION_ROWS:
            cfg = ablation_config(row, base)
            out[row] = {
                "decoder": sum(p.numel() for p in Decoder(cfg).parameters()),
                "head": sum(p.numel() for p in LatentHead(cfg).parameters()),
            }
    return out


@torch.no_grad()
def evaluate_reconstruction(
    model: Any,
    images: Iterable[torch.Tensor],
    *,
    inception: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
    lpips: Any = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Reconstruction metrics of a tokenizer over uint8 ``(B, 3, H, W)`` batches (already cropped):
    sampled latents (seeded), uint8 by truncation, PSNR/SSIM, LPIPS and rFID/rIS when given."""
    metrics = ReconstructionMetrics(lpips, inception)
    gen = torch.Generator(device=device).manual_seed(seed)
    for real in images:
        real = real.to(device)
        z = model.encode(uint8_to_unit(real)).sample(generator=gen)
        metrics.update_decoded(real, model.decode(z))
    return metrics.compute()


def _fmt(value: float | None, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'n/a':>{width}}"
    return f"{value:>{width}.3f}"


def format_table(
    ours: Mapping[str, Mapping[str, float | None]],
    paper: Mapping[str, Mapping[str, float | None]] | None = None,
    sizes: Mapping[str, Mapping[str, int]] | None = None,
    metrics: Sequence[str] = METRIC_KEYS,
) -> str:
    """A markdown table: one line per row, per metric ``ours`` and ``paper`` columns (n/a when unknown)."""
    paper = paper or PAPER_ABLATION
    titles = {k: t for k, t, _ in METRICS}
    head = ["row", "decoder params (M)", "head params (M)"] if sizes else ["row"]
    for k in metrics:
        head += [f"{titles[k]} (ours)", f"{titles[k]} (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in ABLATION_ROWS:
        cells = [ROW_TITLES[row]]
        if sizes:
            cells += [f"{sizes[row]['decoder'] / 1e6:.2f}", f"{sizes[row]['head'] / 1e6:.2f}"]
        for k in metrics:
            cells += [_fmt(ours.get(row, {}).get(k), 0).strip(), _fmt(paper.get(row, {}).get(k), 0).strip()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_rows(
    ours: Mapping[str, Mapping[str, float | None]],
    paper: Mapping[str, Mapping[str, float | None]],
    sizes: Mapping[str, Mapping[str, int]],
) -> list[dict[str, Any]]:
    """The table as JSON-able records (one per row)."""
    return [
        {
            "row": row,
            "title": ROW_TITLES[row],
            "params": dict(sizes.get(row, {})),
            "ours": {k: _json_number(ours.get(row, {}).get(k)) for k in METRIC_KEYS},
            "paper": {k: _json_number(paper.get(row, {}).get(k)) for k in METRIC_KEYS},
        }
        for row in ABLATION_ROWS
    ]


def _json_number(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v.item() if isinstance(v, (np.generic, torch.Tensor)) else v)
    return v if math.isfinite(v) else None


__all__ = [
    "METRICS",
    "METRIC_KEYS",
    "PAPER_ABLATION",
    "evaluate_reconstruction",
    "format_table",
    "read_paper_numbers",
    "read_record",
    "results_from_record",
    "row_sizes",
    "table_rows",
]
