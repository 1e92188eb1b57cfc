"""Upload an export folder (tokenizer or diffusion network) to the Hugging Face Hub; add metrics to its card.

    vfmvae push-to-hub FOLDER owner/name [--metrics record.json ...] [--private]
    vfmvae push-to-hub FOLDER --metrics record.json --no-upload        # only update config.json and README.md
    make push-to-hub FOLDER=... REPO=owner/name [METRICS="..."]

Uploading needs the network: the ``vfmvae`` command turns the Hub off unless ``HF_HUB_OFFLINE=0`` is set, and
a token comes from ``hf auth login`` or ``HF_TOKEN`` (docs/export.md). ``--metrics`` merges measured metrics
(evaluation records of ``vfmvae evaluate`` / ``vfmvae eval-reconstruction``, or ``{name: value}`` JSON) into
``config.json`` and regenerates the model card before the upload.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vfmvae.commands._errors import InputError, run_cli
from vfmvae.commands.export_dit import read_metric_records

PROG = "vfmvae push-to-hub"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="an export folder (tokenizer: save_pretrained; network: vfmvae export-dit)")
    p.add_argument("repo_id", nargs="?", help="the Hub repository, owner/name (created if missing)")
    p.add_argument("--metrics", nargs="*", default=[], help="evaluation records (JSON) to add to the card")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--branch", default=None, help="push to this branch (default: main)")
    p.add_argument("--no-upload", action="store_true", help="only update config.json and the card")
    return p


def refresh_card(folder: Path, metrics: list[dict]) -> dict:
    """Merge ``metrics`` into the folder's ``config.json`` and rewrite ``README.md`` from it; the record."""
    from vfmvae.utils.checkpoint_io import atomic_write
    from vfmvae.utils.hub import metrics_table

    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder} is not an export folder: config.json is missing")
    record = json.loads(config.read_text())
    fmt = str(record.get("format"))
    if fmt.startswith("vfmvae-tokenizer/"):
        from vfmvae.tokenizer.export import read_export_config, tokenizer_model_card

        read_export_config(folder)  # the format check
        make_card = tokenizer_model_card
    elif fmt.startswith("vfmvae-dit/"):
        from vfmvae.dit.export import diffusion_model_card as make_card
    else:
        raise InputError(f"{config}: format {fmt!r} is neither a tokenizer nor a diffusion network export")
    record["metrics"] = {**(record.get("metrics") or {}), **metrics_table(metrics)}
    card = str(make_card(record))
    atomic_write(folder / "README.md", lambda f: f.write(card.encode()))
    atomic_write(config, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return record


def run(argv: list[str] | None = None) -> str | None:
    """The commit URL (None with --no-upload)."""
    args = build_parser().parse_args(argv)
    folder = Path(args.folder)
    if not args.no_upload and not args.repo_id:
        raise InputError("give the repository (owner/name), or --no-upload to only update the card")
    if not args.no_upload and os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""):
        raise InputError("uploading needs the network: run with HF_HUB_OFFLINE=0 (vfmvae keeps the Hub off by default)")
    refresh_card(folder, read_metric_records(args.metrics))
    print(f"model card: {folder / 'README.md'}")
    if args.no_upload:
        return None
    from vfmvae.utils.hub import upload_folder

    url = upload_folder(folder, args.repo_id, private=args.private or None, branch=args.branch)
    print(f"uploaded {folder} to {args.repo_id}: {url}")
    return url


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, PROG)
