"""ADM evaluation suite of a sample batch: gFID, sFID, IS, precision, recall (PyTorch, no downloads).

    vfmvae evaluate SAMPLES REF [--inception-weights PATH] [--num-samples 50000] [--out results.json]
    make evaluate SAMPLES=... REF=...

Follows the official ADM evaluator (`openai/guided-diffusion`, `evaluations/evaluator.py`), the reference for
gFID / IS / precision / recall on ImageNet 256; precision/recall distances are float16 as there
(`--pr-distance-dtype float32` computes them in float32 instead).
SAMPLES: an ADM-style `.npz` (`arr_0` uint8 [N, H, W, 3]) or a folder of images.
REF: ADM's reference batch (e.g. `VIRTUAL_imagenet256_labeled.npz`: `mu, sigma, mu_s, sigma_s` + `arr_0`), another
sample `.npz`, or a folder of images. Activations are cached by content hash under `--cache-dir`.
Prints a table and writes the evaluation record (`vfmvae.metrics.record`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vfmvae.commands._errors import InputError, add_progress_argument, run_cli
from vfmvae.metrics.adm_suite import check_resolutions, evaluate_adm, load_batch
from vfmvae.metrics.inception import AdmInceptionFeatures, default_inception_weights_path
from vfmvae.metrics.precision_recall import PR_DISTANCE_DTYPES
from vfmvae.metrics.record import evaluation_record, write_record
from vfmvae.utils.progress import progress_enabled

ROWS = (
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("inception_score", "Inception Score"),
    ("precision", "Precision"),
    ("recall", "Recall"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("samples", help="sample batch: .npz with arr_0 (uint8 NHWC) or an image folder")
    p.add_argument("ref", help="reference batch: ADM .npz (mu/sigma/mu_s/sigma_s and/or arr_0) or an image folder")
    p.add_argument(
        "--inception-weights",
        default=None,
        help=f"torch-fidelity inception-v3-compat weights (default {default_inception_weights_path()})",
    )
    p.add_argument("--num-samples", type=int, default=None, help="use exactly the first N samples (error if fewer)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--cache-dir", default=".cache/adm_activations", help="activation cache ('' disables)")
    p.add_argument(
        "--pr-distance-dtype",
        default="float16",
        choices=PR_DISTANCE_DTYPES,
        help="precision/recall distances: float16 = ADM (float32 fallback on overflow), the paper protocol",
    )
    p.add_argument("--out", default=None, help="JSON output path (default: <samples>_adm.json)")
    add_progress_argument(p)
    return p


def format_table(results: dict) -> str:
    lines = [f"{'metric':<16}{'value':>12}", "-" * 28]
    for key, label in ROWS:
        value = results.get(key)
        lines.append(f"{label:<16}{'n/a' if value is None else f'{value:.4f}':>12}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """The evaluation record (raises on bad input; `main` turns that into one line)."""
    args = build_parser().parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    samples, reference = load_batch(args.samples), load_batch(args.ref)
    try:  # before the Inception network loads: a 256 px reference for 512 px samples is one line, not a number
        check_resolutions(samples, reference)
    except ValueError as err:
        raise InputError(str(err)) from err
    extractor = AdmInceptionFeatures(args.inception_weights).to(device)
    start = time.time()
    with progress_enabled(not args.no_progress):  # a bar with ETA over the Inception batches
        results = evaluate_adm(
            samples,
            reference,
            extractor,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            device=device,
            cache_dir=args.cache_dir or None,
            pr_distance_dtype=args.pr_distance_dtype,
        )
    print(format_table(results))
    pr = "float16 blocks, float32 fallback on overflow (as ADM)" if args.pr_distance_dtype == "float16" else None
    record = evaluation_record(
        "adm",
        results,
        protocol={
            "follows": "openai/guided-diffusion evaluations/evaluator.py (ADM)",
            "fid": "pool_3 (2048), float64 Frechet distance",
            "sfid": "mixed_6/conv[..., :7] NHWC",
            "inception_score": "softmax of pool_3 logits, splits of 5000",
            "precision_recall": f"k=3, squared distances in {pr or args.pr_distance_dtype}",
        },
        inputs={"samples": str(args.samples), "reference": str(args.ref), "num_samples": args.num_samples},
        weights={"inception": extractor.fingerprint},
        seconds=time.time() - start,
    )
    out = Path(args.out) if args.out else Path(str(Path(args.samples)).rstrip("/").removesuffix(".npz") + "_adm.json")
    print(f"wrote {write_record(record, out)}")
    return record


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae evaluate")
