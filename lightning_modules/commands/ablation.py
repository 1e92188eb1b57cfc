"""Component ablation table: your runs of configs/ablation/*.yaml side by side with the paper's numbers.

    vfmvae ablation --record baseline=outputs/ablation/baseline_reconstruction.json \
                    --record baseline=outputs/ablation/baseline_samples_adm.json ...    # records, or
    vfmvae ablation --tokenizer baseline=outputs/ablation/export/baseline ... --images VAL_DIR \
                    [--inception-weights INCEPTION.pth] [--vgg-weights VGG.pth]       # evaluate exports here

Rows (docs/analyses.md, "Component ablation"): baseline, fusion, blocks, full. A row's metrics come from
evaluation records (`make eval-reconstruction` writes rFID/PSNR/SSIM/LPIPS, `make evaluate` gFID; several
records per row merge) or from its export folder evaluated on `--images` with the official reconstruction
protocol (resize_center crops, sampled latents, uint8 by truncation; rFID needs `--inception-weights`).
Prints a markdown table with each row's decoder / encoder-head size and writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vfmvae.commands._errors import InputError, run_cli
from vfmvae.metrics.ablation_table import (
    PAPER_ABLATION,
    evaluate_reconstruction,
    format_table,
    read_paper_numbers,
    read_record,
    row_sizes,
    table_rows,
)
from vfmvae.tokenizer.ablation import ABLATION_ROWS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--record", action="append", default=[], metavar="ROW=FILE", help="evaluation record (repeatable)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="ROW=EXPORT", help="export folder to evaluate")
    p.add_argument("--images", default=None, help="folder of evaluation images for --tokenizer rows")
    p.add_argument("--num-images", type=int, default=None, help="first N images (sorted paths)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--inception-weights", default=None, help="torch-fidelity Inception weights: rFID/rIS")
    p.add_argument("--vgg-weights", default=None, help="torchvision VGG16 weights: LPIPS")
    p.add_argument("--vfm-path", default=None, help="local VFM folder when an export needs one")
    p.add_argument("--paper", default=None, help="YAML/JSON {row: {metric: value}} with the paper's numbers")
    p.add_argument("--base", default="vfmvae-f16d32-siglip2", help="tokenizer preset the rows derive from")
    p.add_argument("--seed", type=int, default=0, help="latent sampling seed")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--out", default=None, help="JSON file for the table")
    return p


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        row, sep, value = item.partition("=")
        if not sep or not value:
            raise InputError(f"{flag} {item!r}: write ROW=PATH with ROW in {list(ABLATION_ROWS)}")
        if row not in ABLATION_ROWS:
            raise InputError(f"{flag} {item!r}: unknown row {row!r}; rows: {list(ABLATION_ROWS)}")
        out.append((row, value))
    return out


class ImageBatches:
    """uint8 (B, 3, R, R) `resize_center` crops of the images below ``folder`` (sorted paths), read lazily on
    every iteration (each row re-reads them: 50,000 crops at 256 px would not fit in memory)."""

    SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

    def __init__(self, folder: str, num: int | None, resolution: int, batch_size: int):
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"--images {root} is not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images below --images {root}")
        if num is not None:
            if num > len(files):
                raise InputError(f"--num-images {num} but only {len(files)} images below {root}")
            files = files[:num]
        self.files, self.resolution, self.batch_size = files, resolution, batch_size

    def __iter__(self):
        import numpy as np
        import torch
        from PIL import Image

        # The evaluation crop comes from the data layer, which is why this command lives in
        # lightning_modules/commands/ (docs/design.md, "Layers of the code"); no Trainer runs.
        from datamodules.crops import get_crop

        crop, rng = get_crop("resize_center"), np.random.default_rng(0)  # the crop is deterministic
        for start in range(0, len(self.files), self.batch_size):
            arrays = []
            for path in self.files[start : start + self.batch_size]:
                with Image.open(path) as im:
                    arrays.append(crop(im.convert("RGB"), self.resolution, rng))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def run(argv: list[str] | None = None, *, inception=None, lpips=None) -> list[dict]:
    """The table as records (raises on bad input; `main` turns that into one line). ``inception`` / ``lpips``
    stand in for the networks built from ``--inception-weights`` / ``--vgg-weights``."""
    import torch

    args = build_parser().parse_args(argv)
    records, exports = _pairs(args.record, "--record"), _pairs(args.tokenizer, "--tokenizer")
    if exports and args.images is None:
        raise InputError("--tokenizer rows are evaluated on --images DIR (a folder of validation images)")
    try:
        paper = read_paper_numbers(args.paper) if args.paper else PAPER_ABLATION
        results = [(row, read_record(path)) for row, path in records]
    except ValueError as err:  # a file that is not what the flag takes
        raise InputError(str(err)) from err
    ours: dict[str, dict] = {row: {} for row in ABLATION_ROWS}
    for row, values in results:
        ours[row].update({k: v for k, v in values.items() if v is not None})
    if exports:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        batches = ImageBatches(args.images, args.num_images, args.resolution, args.batch_size)
        if inception is None and args.inception_weights:
            from vfmvae.metrics.inception import AdmInceptionFeatures

            inception = AdmInceptionFeatures(args.inception_weights).to(device)
        if lpips is None and args.vgg_weights:
            from vfmvae.losses import LPIPS

            lpips = LPIPS(args.vgg_weights).to(device)
        from vfmvae.tokenizer.export import load_tokenizer

        for row, folder in exports:
            model = load_tokenizer(folder, vfm_pretrained=args.vfm_path, vfm_dtype="float32").to(device).eval().float()
            results = evaluate_reconstruction(
                model, batches, inception=inception, lpips=lpips, seed=args.seed, device=device
            )
            ours[row].update({k: v for k, v in results.items() if k in ("rfid", "psnr", "ssim", "lpips")})
    sizes = row_sizes(args.base)
    print(format_table(ours, paper, sizes))
    if not any(v is not None for values in paper.values() for v in values.values()):
        print("paper columns: n/a = not available in this repository's sources (docs/analyses.md); --paper FILE")
    rows = table_rows(ours, paper, sizes)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "base": args.base}, indent=2))
        print(f"wrote {args.out}")
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae ablation")
