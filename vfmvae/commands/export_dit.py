"""Export a diffusion training checkpoint's network as a Hub model folder (config.json, safetensors, model card).

    vfmvae export-dit --ckpt RUN/checkpoints/last.ckpt --out exports/lightningdit [--weights ema|raw]
        [--metrics samples_adm.json ...]
    make export-dit CKPT=... OUT=... [METRICS="a.json b.json"]

The folder is `vfmvae.dit.export.DiffusionNetworkExport` (docs/export.md): the network's build spec and
weights (EMA by default), its provenance (checkpoint hash, steps, images seen, the latent cache's tokenizer
hash and statistics) and the measured metrics (evaluation records of ``vfmvae evaluate``) on its card.
``vfmvae sample --ckpt FOLDER`` samples from it; ``vfmvae push-to-hub FOLDER owner/name`` uploads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vfmvae.commands._errors import InputError, add_trust_pickle_argument, run_cli
from vfmvae.utils.safe_load import trusting_pickles

PROG = "vfmvae export-dit"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a DiffusionModule training checkpoint (.ckpt)")
    p.add_argument("--out", required=True, help="export folder to write (created; files in it are replaced)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (the paper's) or live weights")
    p.add_argument("--metrics", nargs="*", default=[], help="evaluation records (JSON) shown on the model card")
    add_trust_pickle_argument(p)
    return p


def read_metric_records(paths: list[str]) -> list[dict]:
    """Evaluation records (`vfmvae.metrics.record`) or flat ``{name: value}`` JSON files."""
    records = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"metrics file not found: {path}")
        try:
            records.append(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as err:
            raise InputError(f"metrics file {path} is not JSON ({err.msg} at line {err.lineno})") from err
    return records


def run(argv: list[str] | None = None) -> dict:
    """The export record."""
    from vfmvae.dit.export import DiffusionNetworkExport

    args = build_parser().parse_args(argv)
    metrics = read_metric_records(args.metrics)
    with trusting_pickles(args.trust_pickle):
        try:
            export = DiffusionNetworkExport.from_checkpoint(args.ckpt, args.weights, metrics=metrics)
        except (ValueError, KeyError) as err:
            raise InputError(str(err).strip("'\"")) from err
    record = export.save_pretrained(args.out)
    print(
        f"wrote {args.out} ({record['build']['network']}, {record['weights']} weights, sha256 "
        f"{record['weights_sha256'][:12]}); model card: {Path(args.out) / 'README.md'}"
    )
    return record


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, PROG)
