"""Reconstruction evaluation of a tokenizer: rFID, rIS, PSNR, SSIM, LPIPS.

    vfmvae eval-reconstruction --tokenizer EXPORT_DIR|official.pth --data-root VAL_DIR \
        --inception-weights weights-inception-2015-12-05-6726825d.pth --vgg-weights vgg16-397923af.pth

Follows the official VFM-VAE `tools/reconstruct` (`reconstruct.py` writes the PNG pairs, `evaluate.py` scores
them; docs/design.md, "Evaluation protocol"): every image file below `--data-root` (ImageNet val: 50,000),
`resize_center` crop (Resize(short side) bilinear antialias + CenterCrop), the tokenizer's weights as exported
(EMA), `validation` mode (no EQ transform), fp32 decoder, **sampled** latents (seeded). Reconstructions become
uint8 as the official PNGs do (`to_pil_image`: clamp to [0, 1], x 255, truncate); `--uint8-mode round` rounds
to the nearest level instead. rFID/rIS: torch-fidelity `inception-v3-compat` between reconstructions and the
cropped inputs. Prints a table and writes the evaluation record (`vfmvae.metrics.record`: metrics, protocol,
the tokenizer's weights hash, weight files). `--save-images DIR` also writes the PNG pairs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Here rather than in vfmvae/commands/ because the crop comes from the data layer (docs/design.md,
# "Layers of the code"); no Trainer runs.
from datamodules.crops import get_crop
from vfmvae.codec import uint8_to_unit
from vfmvae.commands._errors import add_progress_argument, add_trust_pickle_argument, run_cli
from vfmvae.metrics.reconstruction import RECONSTRUCTION_UINT8_MODE, ReconstructionMetrics
from vfmvae.metrics.record import evaluation_record, write_record
from vfmvae.utils.progress import progress, progress_enabled
from vfmvae.utils.safe_load import trusting_pickles

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
ROWS = (("rfid", "rFID"), ("ris", "rIS"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae eval-reconstruction", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tokenizer", required=True, help="export folder (any tokenizer kind), diffusers folder, or release file"
    )
    p.add_argument("--tokenizer-preset", default=None, help="baseline preset of a released VA-VAE file (vavae-f16d32)")
    p.add_argument("--tokenizer-kwargs", default=None, help="official G_kwargs (.json/.yaml) for a release .pth")
    p.add_argument("--vfm-path", default=None, help="local SigLIP2 folder when the export/official file needs one")
    p.add_argument("--data-root", required=True, help="folder of images (searched recursively)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num-images", type=int, default=None, help="first N images in sorted path order (default all)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--inception-weights", default=None, help="torch-fidelity inception-v3-compat weights (rFID/rIS)")
    p.add_argument("--vgg-weights", default=None, help="torchvision VGG16 weights for LPIPS")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent sampling")
    p.add_argument(
        "--uint8-mode",
        default=RECONSTRUCTION_UINT8_MODE,
        choices=("truncate", "round"),
        help="decoded image -> uint8: truncate = official tools/reconstruct (to_pil_image); round = nearest level",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--save-images", default=None, help="also write input/recon PNG pairs here")
    p.add_argument("--out", default=None, help="JSON path (default <tokenizer>_reconstruction.json)")
    add_trust_pickle_argument(p)
    add_progress_argument(p)
    return p


def list_images(root: str | os.PathLike, num: int | None = None) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) below {root}")
    if num is not None:
        if num > len(files):
            raise ValueError(f"--num-images {num} but only {len(files)} images below {root}")
        files = files[:num]
    return files


def load_batch(paths: list[Path], resolution: int) -> torch.Tensor:
    """uint8 `(B, 3, R, R)` `resize_center` crops."""
    crop = get_crop("resize_center")
    rng = np.random.default_rng(0)  # unused by the deterministic crop; the interface takes one
    arrays = []
    for path in paths:
        with Image.open(path) as im:
            arrays.append(crop(im.convert("RGB"), resolution, rng))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_model(args: argparse.Namespace, device: torch.device):
    """Any tokenizer kind (`vfmvae.tokenizer.sources.load_any_tokenizer`): VFM-VAE, VA-VAE, SD-VAE (paper Table 1)."""
    from vfmvae.tokenizer.sources import load_any_tokenizer

    model = load_any_tokenizer(
        args.tokenizer, args.tokenizer_preset, args.tokenizer_kwargs, vfm_pretrained=args.vfm_path, vfm_dtype="float32"
    )
    return model.to(device).eval().float()


def tokenizer_provenance(model, path: str) -> dict:
    """The tokenizer's record (kind, weights hash, config; an export's own hash) and how its weights were given."""
    from vfmvae.tokenizer.sources import tokenizer_record

    record = getattr(model, "export_record", None)
    weights = record.get("weights", "export") if record is not None else "official file"
    provenance = record.get("provenance", {}) if record is not None else {}
    return {"path": str(path), **tokenizer_record(model), "weights": weights, "provenance": provenance}


def format_table(results: dict) -> str:
    lines = [f"{'metric':<10}{'value':>12}", "-" * 22]
    for key, label in ROWS:
        if key in results:
            value = results[key]
            lines.append(f"{label:<10}{value:>12.4f}")
    lines.append(f"{'images':<10}{results['num_images']:>12d}")
    return "\n".join(lines)


@torch.no_grad()
def evaluate(
    model,
    paths: list[Path],
    resolution: int,
    batch_size: int,
    metrics: ReconstructionMetrics,
    device: torch.device,
    seed: int = 0,
    save_dir: Path | None = None,
) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, total=len(starts), desc="reconstruction", unit="batch"):
        chunk = paths[start : start + batch_size]
        real = load_batch(chunk, resolution).to(device)
        posterior = model.encode(uint8_to_unit(real))
        # A sampled latent, as the official reconstruct.py (docs/design.md, "Evaluation protocol").
        fake = metrics.update_decoded(real, model.decode(posterior.sample(generator=gen)))
        if save_dir is not None:
            for path, r, f in zip(chunk, real.cpu(), fake.cpu()):
                Image.fromarray(r.permute(1, 2, 0).numpy()).save(save_dir / f"{path.stem}_input.png")
                Image.fromarray(f.permute(1, 2, 0).numpy()).save(save_dir / f"{path.stem}_recon.png")
    return metrics.compute()


def run(argv: list[str] | None = None) -> dict:
    """The evaluation record (raises on bad input; `main` turns that into one line)."""
    args = build_parser().parse_args(argv)
    with trusting_pickles(args.trust_pickle), progress_enabled(not args.no_progress):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = list_images(args.data_root, args.num_images)
    model = load_model(args, device)
    lpips = inception = None
    if args.vgg_weights:
        from vfmvae.losses import LPIPS

        lpips = LPIPS(args.vgg_weights).to(device)
    if args.inception_weights:
        from vfmvae.metrics.inception import AdmInceptionFeatures

        inception = AdmInceptionFeatures(args.inception_weights).to(device)
    save_dir = Path(args.save_images) if args.save_images else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    metrics = ReconstructionMetrics(lpips, inception, uint8_mode=args.uint8_mode)
    results = evaluate(model, paths, args.resolution, args.batch_size, metrics, device, args.seed, save_dir)
    print(format_table(results))
    uint8 = "to_pil_image: clamp, x 255, truncate" if args.uint8_mode == "truncate" else "clamp, x 255, round"
    record = evaluation_record(
        "reconstruction",
        results,
        protocol={
            "follows": "VFM-VAE tools/reconstruct (reconstruct.py + evaluate.py); rFID/rIS with torch-fidelity",
            "crop": "resize_center",
            "resolution": args.resolution,
            "latent": "sampled",
            "seed": args.seed,
            "uint8": f"{args.uint8_mode} ({uint8})",
            "psnr": "per image, data range 2 on [-1, 1], mean",
            "ssim": "torchmetrics gaussian 11/1.5, data range 2, mean over images",
            "rfid_ris": "torch-fidelity inception-v3-compat vs the cropped inputs; IS 10 splits, seed 2020",
        },
        inputs={"tokenizer": tokenizer_provenance(model, args.tokenizer), "data_root": str(args.data_root)},
        weights={"inception": None if inception is None else inception.fingerprint, "vgg": args.vgg_weights},
        seconds=time.time() - start,
    )
    out = Path(args.out) if args.out else Path(str(Path(args.tokenizer)).rstrip("/") + "_reconstruction.json")
    print(f"wrote {write_record(record, out)}")
    return record


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae eval-reconstruction")
