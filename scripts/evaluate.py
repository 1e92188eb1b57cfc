"""ADM evaluation suite (gFID, sFID, IS, precision, recall) in PyTorch; no TensorFlow, no downloads.

    python scripts/evaluate.py SAMPLES REF [--inception-weights PATH] [--num-samples 50000] [--out results.json]

SAMPLES: an ADM-style `.npz` (`arr_0` uint8 [N, H, W, 3]) or a folder of images.
REF: ADM's reference batch (e.g. `VIRTUAL_imagenet256_labeled.npz`: `mu, sigma, mu_s, sigma_s` + `arr_0`), another
sample `.npz`, or a folder of images. Activations are cached by content hash under `--cache-dir`.
Prints a table and writes JSON (results + provenance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfmvae.metrics.adm_suite import evaluate_adm, load_batch  # noqa: E402
from vfmvae.metrics.inception import AdmInceptionFeatures, default_inception_weights_path  # noqa: E402

ROWS = (
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("inception_score", "Inception Score"),
    ("precision", "Precision"),
    ("recall", "Recall"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--out", default=None, help="JSON output path (default: <samples>_adm.json)")
    return p


def format_table(results: dict) -> str:
    lines = [f"{'metric':<16}{'value':>12}", "-" * 28]
    for key, label in ROWS:
        value = results.get(key)
        lines.append(f"{label:<16}{'n/a' if value is None else f'{value:.4f}':>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    extractor = AdmInceptionFeatures(args.inception_weights).to(device)
    samples, reference = load_batch(args.samples), load_batch(args.ref)
    start = time.time()
    results = evaluate_adm(
        samples,
        reference,
        extractor,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        device=device,
        cache_dir=args.cache_dir or None,
    )
    print(format_table(results))
    out = Path(args.out) if args.out else Path(str(Path(args.samples)).rstrip("/").removesuffix(".npz") + "_adm.json")
    record = {
        "results": results,
        "samples": str(args.samples),
        "reference": str(args.ref),
        "inception_weights": extractor.fingerprint,
        "protocol": "ADM evaluator in PyTorch: pool_3 FID/PR(k=3), Mixed_6d[:7] NHWC sFID, IS split 5000",
        "seconds": round(time.time() - start, 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
