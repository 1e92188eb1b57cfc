"""Evaluate text-to-image samples: FID against a folder of reference images and CLIP score against the prompts.

    vfmvae evaluate-t2i --samples outputs/t2i_samples/mjhq --reference /data/mjhq30k/images \
        --inception-weights weights/weights-inception-2015-12-05-6726825d.pth --clip weights/clip-vit-large-patch14

The MJHQ-30K protocol with local files (docs/text_to_image.md, "Evaluation"): ``--samples`` is a
`sample-t2i` folder (``images/*.png`` and ``prompts.jsonl``, one image per prompt of the prompt list);
``--reference`` a folder of reference images (searched recursively), each resized (short side, bicubic) and
centre-cropped to the samples' size. FID uses the ADM Inception features and the float64 Fréchet distance
of `vfmvae.metrics`; CLIP score is torchmetrics' over a local CLIP folder (`vfmvae.text.clip_score`).
Either metric can be skipped by leaving out its weights. Prints and writes ``metrics_t2i.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfmvae.commands._errors import InputError, run_cli
from vfmvae.metrics.adm_suite import IMAGE_SUFFIXES
from vfmvae.metrics.frechet import compute_statistics
from vfmvae.metrics.inception import AdmInceptionFeatures, extract_features

__all__ = ["build_parser", "main", "run", "load_reference", "load_samples"]


def load_samples(folder: Path) -> tuple[np.ndarray, list[str]]:
    """uint8 NHWC images of a `sample-t2i` folder and the prompt of each image."""
    rows = [json.loads(x) for x in (folder / "prompts.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    files = [folder / "images" / f"{r['index']:06d}.png" for r in rows]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} sample images missing (first: {missing[0]}); finish sample-t2i first")
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8) for f in files])
    return images, [r["prompt"] for r in rows]


def load_reference(folder: Path, size: int) -> np.ndarray:
    """uint8 NHWC reference images: short side resized (bicubic) to ``size``, centre crop."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no reference images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        out.append(np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8))
    return np.stack(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vfmvae evaluate-t2i", description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, help="a sample-t2i output folder")
    ap.add_argument("--reference", help="folder of reference images (FID)")
    ap.add_argument("--inception-weights", help="torch-fidelity Inception weights (FID)")
    ap.add_argument("--clip", help="local CLIP save_pretrained folder (CLIP score)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="JSON file (default: <samples>/metrics_t2i.json)")
    return ap


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    samples_dir = Path(args.samples)
    images, prompts = load_samples(samples_dir)
    result: dict[str, float | int | str] = {"num_samples": len(images), "samples": str(samples_dir)}
    if (args.reference is None) != (args.inception_weights is None):
        raise InputError("FID needs both --reference and --inception-weights")
    if args.reference is not None:
        reference = load_reference(Path(args.reference), images.shape[1])
        extractor = AdmInceptionFeatures(args.inception_weights).eval()
        feats = [
            extract_features(x, extractor, args.batch_size, args.device, keys=("pool",))["pool"]
            for x in (images, reference)
        ]
        result["fid"] = compute_statistics(feats[0]).frechet_distance(compute_statistics(feats[1]))
        result.update(num_reference=len(reference), reference=str(args.reference))
    if args.clip is not None:
        from vfmvae.text.clip_score import clip_score

        result["clip_score"] = clip_score(
            args.clip, torch.from_numpy(images).permute(0, 3, 1, 2), prompts, args.batch_size
        )
    if len(result) == 2:
        raise InputError("nothing to compute: give --reference + --inception-weights and/or --clip")
    out = Path(args.out) if args.out else samples_dir / "metrics_t2i.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae evaluate-t2i")


if __name__ == "__main__":
    raise SystemExit(main())
