"""Reference statistics of a local image folder for the ADM suite (Inception mu/sigma, sFID, precision/recall).

    vfmvae reference-stats --data-root /data/imagenet/train --out VIRTUAL_imagenet512_ours.npz --image-size 512
    make reference-stats DATA_ROOT=/data/imagenet/train OUT=ref512.npz IMAGE_SIZE=512

Every image below ``--data-root`` (any depth, sorted by relative path) is cropped with the generation
references' crop (``adm_center``, ADM's ``center_crop_arr``; docs/design.md, "Crops and resizing") to
``--image-size`` and read by the ADM Inception (`vfmvae.metrics.AdmInceptionFeatures`, local weights only).
The ``.npz`` has the layout of ADM's reference batches, so ``make evaluate REF=<file>`` reads it
(docs/design.md, "Evaluation protocol"):

- ``mu``, ``sigma``: mean and unbiased covariance (float64) of the pool_3 features of *all* images (FID);
- ``mu_s``, ``sigma_s``: the same of the ``mixed_6/conv`` spatial features (sFID);
- ``pool``: pool_3 features (float32) of a seeded random subset of ``--pr-images`` images (ADM's reference
  batches hold 10,000), what precision/recall compares the samples with;
- ``arr_0`` (``--store-images``): the uint8 NHWC crops of that subset, which ADM's own evaluator needs;
- ``resolution``: the crop side, checked against the samples' by the evaluation; ``meta``: a JSON record.

Statistics are accumulated in float64 around a shift (the first batch's mean), so the folder never has to fit
in memory. The result does not depend on ``--batch-size`` beyond float round-off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vfmvae.commands._errors import InputError, add_progress_argument, run_cli
from vfmvae.utils.progress import progress, progress_enabled

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


class ReferenceStatsError(InputError):
    """Bad input, reported on one line by the command (`vfmvae.commands._errors.run_cli`)."""


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files below ``root`` at any depth, sorted by their path relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ReferenceStatsError(f"--data-root {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ReferenceStatsError(f"--data-root {root} holds {len(files)} image(s); the statistics need at least 2")
    return files


class ShiftedMoments:
    """Streaming mean and unbiased covariance of `(N, D)` rows in float64, shifted by the first batch's mean
    (the textbook shifted-data algorithm: sums of ``x - K`` keep the cancellation error small)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = np.zeros(x.shape[1])
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        d = x - self.shift
        self.n += len(x)
        self.sum += d.sum(0)
        self.outer += d.T @ d

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma), sigma with ddof = 1 like `numpy.cov` (ADM's statistics)."""
        if self.n < 2:
            raise ReferenceStatsError(f"need at least 2 images for a covariance, got {self.n}")
        mean_d = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mean_d, mean_d)) / (self.n - 1)
        return self.shift + mean_d, sigma


def _load_crop(path: Path, size: int, crop: Callable) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return crop(img.convert("RGB"), size, None)
    except OSError as err:
        raise ReferenceStatsError(f"cannot read image {path}: {err}") from err


class _Crops(torch.utils.data.Dataset):
    def __init__(self, files: Sequence[Path], size: int, crop: Callable) -> None:
        self.files, self.size, self.crop = list(files), size, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(_load_crop(self.files[i], self.size, self.crop).copy())  # PIL arrays are read-only


def compute_reference_stats(
    files: Sequence[Path],
    extractor: nn.Module,
    *,
    image_size: int,
    crop: str = "adm_center",
    pr_images: int = 10_000,
    store_images: bool = False,
    seed: int = 0,
    batch_size: int = 50,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """The ``.npz`` arrays (module docstring) of ``files``; ``extractor`` maps uint8 ``(B, 3, H, W)`` to
    ``{"pool": (B, D), "spatial": (B, D_s), ...}`` like `AdmInceptionFeatures`.

    The precision/recall subset is ``numpy.random.default_rng(seed).choice(N, min(pr_images, N))``, sorted.
    """
    from datamodules.crops import get_crop

    if image_size < 1 or batch_size < 1 or pr_images < 0:
        raise ReferenceStatsError("--image-size and --batch-size must be positive and --pr-images non-negative")
    crop_fn = get_crop(crop)
    n = len(files)
    subset = np.sort(np.random.default_rng(seed).choice(n, size=min(pr_images, n), replace=False))
    keep = np.zeros(n, dtype=bool)
    keep[subset] = True
    moments = {key: ShiftedMoments() for key in STAT_KEYS}
    pool_rows: list[np.ndarray] = []
    image_rows: list[np.ndarray] = []
    loader = torch.utils.data.DataLoader(
        _Crops(files, image_size, crop_fn), batch_size=batch_size, num_workers=num_workers, shuffle=False
    )
    start = 0
    with torch.no_grad(), progress_enabled(show_progress):  # a bar with ETA over the batches (rank 0)
        for batch in progress(loader, total=len(loader), desc="reference-stats"):  # (B, H, W, 3) uint8
            x = batch.to(device).permute(0, 3, 1, 2).contiguous()
            feats = {k: v.float().cpu().numpy() for k, v in extractor(x).items() if k in STAT_KEYS}
            for key, m in moments.items():
                m.update(feats[key])
            chosen = keep[start : start + len(batch)]
            pool_rows.append(feats["pool"][chosen])
            if store_images:
                image_rows.append(batch.numpy()[chosen])
            start += len(batch)
    out: dict[str, np.ndarray] = {}
    for key, (mu_key, sigma_key) in STAT_KEYS.items():
        out[mu_key], out[sigma_key] = moments[key].finalize()
    out["pool"] = np.concatenate(pool_rows).astype(np.float32)
    if store_images:
        out["arr_0"] = np.concatenate(image_rows)
    out["resolution"] = np.array(image_size)
    out["num_images"] = np.array(n)
    return out


def build_extractor(weights: str | None) -> nn.Module:
    """The ADM Inception from a local weights file (tests replace this factory with a tiny network)."""
    from vfmvae.metrics.inception import AdmInceptionFeatures

    return AdmInceptionFeatures(weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae reference-stats", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", required=True, help="folder of reference images (searched at any depth)")
    p.add_argument("--out", required=True, help="output .npz (ADM reference-batch layout)")
    p.add_argument("--image-size", type=int, default=256, help="crop side in pixels (256, 512)")
    p.add_argument(
        "--crop",
        default="adm_center",
        choices=("adm_center", "resize_center"),
        help="datamodules/crops.py; ADM: adm_center",
    )
    p.add_argument("--inception-weights", default=None, help="torch-fidelity weights-inception-2015-12-05-6726825d.pth")
    p.add_argument("--pr-images", type=int, default=10_000, help="images whose features precision/recall uses")
    p.add_argument("--store-images", action="store_true", help="also store their crops as arr_0 (ADM's evaluator)")
    p.add_argument("--num-images", type=int, default=None, help="use the first N images (sorted paths) only")
    p.add_argument("--seed", type=int, default=0, help="seed of the precision/recall subset")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--num-workers", type=int, default=4, help="image-decoding processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    add_progress_argument(p)
    return p


def run(args: argparse.Namespace) -> Path:
    files = list_images(args.data_root)
    if args.num_images is not None:
        if not 2 <= args.num_images <= len(files):
            raise ReferenceStatsError(f"--num-images {args.num_images} must lie in [2, {len(files)}]")
        files = files[: args.num_images]
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ReferenceStatsError(f"--out {out} must end in .npz (the ADM reference-batch format)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    extractor = build_extractor(args.inception_weights).to(device).eval()
    arrays = compute_reference_stats(
        files,
        extractor,
        image_size=args.image_size,
        crop=args.crop,
        pr_images=args.pr_images,
        store_images=args.store_images,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=device,
        show_progress=not args.no_progress,
    )
    meta = {
        "data_root": str(args.data_root),
        "num_images": len(files),
        "image_size": args.image_size,
        "crop": args.crop,
        "pr_images": len(arrays["pool"]),
        "pr_seed": args.seed,
        "feature_network": getattr(extractor, "fingerprint", type(extractor).__name__),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, out)  # a crash never leaves a half-written reference
    return out


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run_and_report, argv, "vfmvae reference-stats")


def _run_and_report(argv: list[str] | None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out = run(args)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(main())
