"""Paper Table 1 from the user's metric records, side by side with the paper's numbers (docs/analyses.md, "Table 1").

Columns (one row per tokenizer):

- ``rfid``: ``results.rfid`` of a reconstruction record (`vfmvae eval-reconstruction`);
- ``gfid``: ``results.fid`` of an ADM record (`vfmvae evaluate`) of samples without CFG from the diffusion
  checkpoint at the table's epoch (paper: LightningDiT, 64 epochs; SD-VAE 80);
- ``linear_probe``: ``results.top1`` of a linear-probe record (`vfmvae linear-probe`), in percent;
- ``cknna`` / ``se_cknna``: rows of a SE-CKNNA CSV (`vfmvae se-cknna`) for the tokenizer's model: CKNNA is the
  ``clean`` condition, SE-CKNNA the named aggregate ``mean_over_conditions`` (the paper reports "CKNNA -> SE-CKNNA"
  for each tokenizer; docs/design.md, "SE-CKNNA").

A record that is not given is shown as ``-``; a given record that is missing or lacks the number is an error that
names the file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PAPER_TABLE1", "TABLE1_COLUMNS", "read_table1_row", "format_table1", "RECORD_KEYS"]

TABLE1_COLUMNS = ("rfid", "gfid", "linear_probe", "cknna", "se_cknna")
COLUMN_TITLES = {"rfid": "rFID", "gfid": "gFID", "linear_probe": "lin. probe", "cknna": "CKNNA", "se_cknna": "SE-CKNNA"}
RECORD_KEYS = ("reconstruction", "generation", "linear_probe", "se_cknna")

# Paper Table 1 (gFID without CFG under the same LightningDiT training, at the epoch given). The paper's rFID
# column is not reproduced here: fill it in from the paper (`paper_overrides` in the config) when comparing.
PAPER_TABLE1: dict[str, dict[str, Any]] = {
    "VFM-VAE": {"rfid": None, "gfid": 3.80, "gfid_epoch": 64, "linear_probe": 43.2, "cknna": 0.188, "se_cknna": 0.191},
    "VA-VAE": {"rfid": None, "gfid": 5.14, "gfid_epoch": 64, "linear_probe": 31.9, "cknna": 0.202, "se_cknna": 0.135},
    "SD-VAE": {"rfid": None, "gfid": 7.13, "gfid_epoch": 80, "linear_probe": 8.0, "cknna": 0.004, "se_cknna": 0.005},
}


def _read_json(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Table 1: {kind} record {path} does not exist (run the command that writes it)")
    record = json.loads(path.read_text())
    if record.get("kind") != kind:
        raise ValueError(f"Table 1: {path} is a {record.get('kind')!r} record, expected {kind!r}")
    return record


def _result(path: Path, kind: str, key: str) -> float | None:
    results = _read_json(path, kind).get("results", {})
    if key not in results:
        raise KeyError(f"Table 1: {path} has no results.{key} (was it computed? e.g. rFID needs Inception weights)")
    return results[key]


def read_se_cknna(path: Path, model: str | None = None) -> tuple[float, float]:
    """``(CKNNA, SE-CKNNA)`` = (``clean``, ``mean_over_conditions``) of ``model``'s pooled rows in a SE-CKNNA CSV
    (``model`` may be omitted when the file holds exactly one tokenizer/VFM model)."""
    if not path.is_file():
        raise FileNotFoundError(f"Table 1: SE-CKNNA table {path} does not exist (run `vfmvae se-cknna`)")
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["feature"] == "pooled"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    if model is None:
        if len(models) != 1:
            raise ValueError(f"Table 1: {path} holds models {models}; name one as se_cknna_model")
        model = models[0]
    values = {r["condition"]: float(r["cknna"]) for r in rows if r["model"] == model}
    missing = [c for c in ("clean", "mean_over_conditions") if c not in values]
    if missing:
        raise KeyError(f"Table 1: {path} has no {missing} rows for model {model!r} (models: {models})")
    return values["clean"], values["mean_over_conditions"]


def read_table1_row(records: Mapping[str, Any], base: str | os.PathLike = ".") -> dict[str, float | None]:
    """One tokenizer's measured numbers from its records (keys `RECORD_KEYS`, paths relative to ``base``;
    ``se_cknna_model`` names the CSV model). Absent records give ``None``."""
    unknown = sorted(set(records) - {*RECORD_KEYS, "se_cknna_model"})
    if unknown:
        raise KeyError(f"Table 1: unknown record keys {unknown}; known: {list(RECORD_KEYS)} and se_cknna_model")
    path = {k: Path(base) / records[k] for k in RECORD_KEYS if records.get(k)}
    row: dict[str, float | None] = dict.fromkeys(TABLE1_COLUMNS)
    if "reconstruction" in path:
        row["rfid"] = _result(path["reconstruction"], "reconstruction", "rfid")
    if "generation" in path:
        row["gfid"] = _result(path["generation"], "adm", "fid")
    if "linear_probe" in path:
        row["linear_probe"] = _result(path["linear_probe"], "linear_probe", "top1")
    if "se_cknna" in path:
        row["cknna"], row["se_cknna"] = read_se_cknna(path["se_cknna"], records.get("se_cknna_model"))
    return row


def _cell(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.1f}" if column == "linear_probe" else f"{value:.2f}" if column in ("rfid", "gfid") else f"{value:.3f}"
    )


def format_table1(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: per tokenizer a measured row ("ours") and the paper's ("paper"); gFID with its epoch.

    ``rows``: ``{"name", "measured": {column: value}, "paper": {column: value, "gfid_epoch"}, "gfid_epoch"}``.
    """
    head = ["tokenizer", "source", *(COLUMN_TITLES[c] for c in TABLE1_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for source, values, epoch in (("ours", row["measured"], row.get("gfid_epoch")),
                                      ("paper", row.get("paper") or {}, (row.get("paper") or {}).get("gfid_epoch"))):  # fmt: skip
            cells = []
            for column in TABLE1_COLUMNS:
                text = _cell(values.get(column), column)
                if column == "gfid" and text != "-" and epoch is not None:
                    text += f" ({epoch:g} ep)"
                cells.append(text)
            lines.append("| " + " | ".join([row["name"], source, *cells]) + " |")
    return "\n".join(lines)
