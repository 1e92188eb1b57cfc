"""Build the key list of images whose shorter side is >= 256 px (the paper's tokenizer training filter).

The official list (``imagenet_train_hr_256_indices.pkl``) is not published, so this rebuilds it from a
dataset: it reads only each image's header (no decoding), keeps keys with ``min(W, H) >= --min-side``,
and writes them sorted, one per line (``.txt``) or as the official pickled list (``.pkl``). Unreadable
images are excluded and counted. A progress bar runs while scanning; a summary of how many images
were kept ends the run.

Examples::

    vfmvae make-filter-list --source imagefolder --root data/imagenet/train \
        --out data/imagenet_train_hr_256.txt --workers 8
    vfmvae make-filter-list --source webdataset --root data/imagenet-1k-wds --split train \
        --out data/imagenet_train_hr_256.txt

The keys are file stems / WebDataset ``__key__`` values, so a list built from either source filters both.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from multiprocessing import Pool

from tqdm import tqdm

# Here rather than in vfmvae/commands/ because it reads through the data layer (docs/design.md,
# "Layers of the code"); no Trainer runs.
from datamodules.decoding import image_size
from datamodules.imagefolder import ImageFolderSource
from datamodules.key_filter import save_key_list
from datamodules.webdataset_shards import WebDatasetSource, list_shards
from vfmvae.commands._errors import add_progress_argument
from vfmvae.utils.console import quiet_console


def _measure(item: tuple[str, str | bytes | None]) -> tuple[str, tuple[int, int] | None]:
    key, data = item
    if data is None:
        return key, None
    try:
        return key, image_size(data)
    except Exception:  # noqa: BLE001 - any unreadable header counts as unreadable
        return key, None


def _records(args: argparse.Namespace) -> tuple[Iterator[tuple[str, str | bytes | None]], int | None]:
    if args.source == "imagefolder":
        source = ImageFolderSource(args.root)
        return ((r.key, r.data) for r in (source[i] for i in range(len(source)))), len(source)
    shards = list_shards(args.root, args.split, args.pattern)
    source = WebDatasetSource(shards, shuffle=False, infinite=False, rank=0, world_size=1)
    return ((r.key, r.data) for r in source.iter_records()), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae make-filter-list",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", choices=("imagefolder", "webdataset"), required=True)
    p.add_argument("--root", required=True, help="ImageFolder split folder, or the WebDataset shard folder")
    p.add_argument("--split", default="train", help="WebDataset split name (fills {split} in --pattern)")
    p.add_argument("--pattern", default="*-{split}-*.tar", help="WebDataset shard glob under --root")
    p.add_argument("--out", required=True, help="output key list (.txt, or .pkl for the official format)")
    p.add_argument("--min-side", type=int, default=256, help="keep images whose shorter side is >= this (px)")
    p.add_argument("--workers", type=int, default=0, help="header-reading processes (0: in this process)")
    add_progress_argument(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.min_side < 1:
        p.error(f"--min-side must be >= 1, got {args.min_side}")
    return args


def run(argv: list[str] | None = None) -> dict[str, int]:
    """Counts of images seen / kept / unreadable."""
    args = parse_args(argv)
    records, total = _records(args)
    kept: list[str] = []
    seen = unreadable = 0
    pool = Pool(args.workers) if args.workers > 0 else None
    try:
        results = pool.imap(_measure, records, chunksize=64) if pool else map(_measure, records)
        bar = tqdm(results, total=total, desc="reading image sizes", unit="img", disable=args.no_progress)
        for key, size in bar:
            seen += 1
            if size is None:
                unreadable += 1
                tqdm.write(f"unreadable image skipped: {key}", file=sys.stderr)
            elif min(size) >= args.min_side:
                kept.append(key)
            if seen % 1000 == 0:
                bar.set_postfix(kept=len(kept))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if seen == 0:
        raise SystemExit(f"no images found under {args.root}")
    if not kept:
        raise SystemExit(f"no image of {seen} has a shorter side >= {args.min_side} px; nothing written")
    out = save_key_list(kept, args.out)
    print(
        f"kept {len(kept)} of {seen} images ({100 * len(kept) / seen:.2f}%) with shorter side >= {args.min_side} px; "
        f"{unreadable} unreadable; wrote {out}"
    )
    return {"seen": seen, "kept": len(kept), "unreadable": unreadable}


def main(argv: list[str] | None = None) -> int:
    quiet_console()
    run(argv)
    return 0
