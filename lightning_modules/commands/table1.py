"""Paper Table 1 (rFID, gFID, linear probe, CKNNA -> SE-CKNNA per tokenizer) from your runs, beside the paper's.

    vfmvae table1 --config configs/analyses/table1.yaml [--out table1.md]
    vfmvae table1 --config configs/analyses/table1_demo.yaml          # make demo-analyses: runs every column

The config lists the tokenizers; each names its metric records (written by ``vfmvae eval-reconstruction``,
``vfmvae evaluate``, ``vfmvae linear-probe``, ``vfmvae se-cknna``) and the paper row to compare with. With a
``pipeline:`` section, records that are not given are produced first by running those commands
(`lightning_modules.table1_pipeline`; docs/analyses.md, "Table 1").
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import yaml

from vfmvae.commands._errors import InputError, run_cli

TOP_KEYS = {"gfid_epoch", "pipeline", "tokenizers"}
PIPELINE_KEYS = {"data_root", "demo_data", "out", "options"}
ENTRY_KEYS = {"name", "paper", "tokenizer", "tokenizer_preset", "records", "gfid_epoch"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfmvae table1", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", required=True, help="Table 1 config (configs/analyses/table1.yaml)")
    p.add_argument("--out", help="also write the table (markdown) here, and its numbers as JSON beside it")
    p.add_argument("--feature-extractor", help="pipeline runs: 'demo' or 'inception@WEIGHTS' (default: the config's)")
    return p


def _fail(message: str) -> None:
    raise InputError(message)


def _check_keys(what: str, given: dict, known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        _fail(f"{what}: unknown keys {unknown}; known: {sorted(known)}")


def load_config(path: str) -> dict[str, Any]:
    """The Table 1 config, checked (one-line errors naming the key)."""
    if not Path(path).is_file():
        _fail(f"--config {path} does not exist")
    config = yaml.safe_load(Path(path).read_text()) or {}
    _check_keys(path, config, TOP_KEYS)
    if not config.get("tokenizers"):
        _fail(f"{path}: no tokenizers listed")
    _check_keys(f"{path}: pipeline", config.get("pipeline") or {}, PIPELINE_KEYS)
    for i, entry in enumerate(config["tokenizers"]):
        _check_keys(f"{path}: tokenizers[{i}]", entry, ENTRY_KEYS)
        if "name" not in entry:
            _fail(f"{path}: tokenizers[{i}] has no name")
    return config


def _paper_row(entry: dict) -> dict:
    from vfmvae.analyses import PAPER_TABLE1

    paper = entry.get("paper", entry["name"])
    if isinstance(paper, str):
        if paper not in PAPER_TABLE1:
            _fail(
                f"tokenizer {entry['name']!r}: paper row {paper!r} unknown; known: {sorted(PAPER_TABLE1)} or a mapping"
            )
        return dict(PAPER_TABLE1[paper])
    return dict(paper or {})


def _write_demo_data(root: Path, spec: dict) -> None:
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder

    size = int(spec.get("resolution", 64))
    write_demo_imagefolder(
        root / "train", DemoDataConfig(resolution=size, num_per_class=int(spec.get("train_per_class", 8)), seed=0)
    )
    write_demo_imagefolder(
        root / "val", DemoDataConfig(resolution=size, num_per_class=int(spec.get("val_per_class", 4)), seed=1)
    )


def collect_rows(config: dict[str, Any], feature_extractor: str | None = None) -> tuple[list[dict], dict[str, float]]:
    """Measured and paper rows of every tokenizer (running the pipeline where configured); timings per step."""
    from vfmvae.analyses import read_table1_row

    pipeline, timings = config.get("pipeline"), {}
    if pipeline and pipeline.get("demo_data") is not None:
        start = time.time()
        _write_demo_data(Path(pipeline["data_root"]), pipeline["demo_data"])
        timings["data"] = time.time() - start
    rows = []
    for entry in config["tokenizers"]:
        records = dict(entry.get("records") or {})
        if pipeline and "tokenizer" in entry:
            from lightning_modules.table1_pipeline import run_table1_pipeline

            options = dict(pipeline.get("options") or {})
            if feature_extractor:
                options["feature_extractor"] = feature_extractor
            slug = re.sub(r"[^a-z0-9]+", "_", entry["name"].lower()).strip("_")
            produced = run_table1_pipeline(entry["tokenizer"], entry.get("tokenizer_preset"), pipeline["data_root"],
                                           Path(pipeline["out"]) / slug, options, timings)  # fmt: skip
            records = {**produced, **records}
        try:
            measured = read_table1_row(records)
        except (FileNotFoundError, KeyError, ValueError) as err:
            _fail(f"tokenizer {entry['name']!r}: {str(err).strip(chr(39))}")
        epoch = entry.get("gfid_epoch", config.get("gfid_epoch"))
        if records.get("generation"):
            epoch = json.loads(Path(records["generation"]).read_text()).get("protocol", {}).get("epochs") or epoch
        rows.append({"name": entry["name"], "measured": measured, "paper": _paper_row(entry),
                     "gfid_epoch": None if epoch is None else round(float(epoch), 2)})  # fmt: skip
    return rows, timings


def run(argv: list[str] | None = None) -> list[dict]:
    """The table's rows (raises `InputError` on a config or record problem)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from vfmvae.analyses import format_table1

    start = time.time()
    rows, timings = collect_rows(load_config(args.config), args.feature_extractor)
    table = format_table1(rows)
    print(table)
    if timings:
        print(
            "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f"; total {time.time() - start:.1f}"
        )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps({"rows": rows, "seconds": timings}, indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae table1")
