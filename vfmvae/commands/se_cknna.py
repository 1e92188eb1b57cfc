"""SE-CKNNA of tokenizers, VFMs and diffusion networks against a reference VFM: CSV + PNG.

Offline protocol of docs/design.md, "SE-CKNNA"::

    vfmvae se-cknna --images DIR --reference dinov2-large[@WEIGHTS] \
        --model tokenizer:vfmvae-f16d32-siglip2@CKPT --model vfm:siglip2-large-patch16-512@WEIGHTS \
        --model lightningdit:LightningDiT-XL/1@CKPT --tokenizer vfmvae-f16d32-siglip2@CKPT --latent-stats STATS \
        --out-dir outputs/se_cknna

Images: PNGs in DIR, sorted by stem (index i -> transform seed 42 + i), Lanczos-resized to --resolution if needed.
Models (`KIND:PRESET[@WEIGHTS]`, repeatable):
- `vfm:<vfmvae.vfm preset>`  DINOv2 or SigLIP rules by family; `tokenizer:<vfmvae.tokenizer preset>` (weights: a
  state dict of our `VFMVAE`, optionally wrapped in `state_dict`/`G_ema`/`ema`; or an export folder of any tokenizer
  kind, or a baseline preset such as `vavae-f16d32` with a released VA-VAE file);
- `<diffusion family>:<preset>` (any registered network: `lightningdit:...`, `reg:...`): block features at
  t = 0.5 (own time convention), null condition, on clean images encoded by `--tokenizer` and normalised by
  `--latent-stats` (a `latents_stats.pt` with `mean`/`std`; if omitted, per-channel statistics of these latents
  are used). PRESET `official` + `--dit-kwargs JSON` loads an official checkpoint through the family's converter.
  A class token in the network's state (REG) comes from `--cls-vfm` (DINOv2-B) on the image resized to 224 px
  bilinear without antialias, as the official prefetch; REG's projector features average all tokens, the
  class token included, as the official extractor.
The models and the feature loop live in `vfmvae.metrics.se_models` / `vfmvae.metrics.se_probe`.
Tokenizer/VFM models get one value per condition (clean, equivariance, noise_0.050..0.200) plus
`mean_over_conditions`; DiTs get one value per block on the clean images.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from vfmvae.commands._errors import add_progress_argument, add_trust_pickle_argument, run_cli
from vfmvae.metrics.cknna import cknna
from vfmvae.metrics.se_cknna import (
    AGGREGATE_NAME,
    TokenizerSEExtractor,
    dit_block_features,
    extract_condition_features,
    se_cknna,
)
from vfmvae.metrics.se_models import (
    build_dit,
    build_vfm_extractor,
    encode_latents,
    image_class_tokens,
    latent_stats,
    parse_spec,
)
from vfmvae.metrics.se_transforms import NOISE_LEVELS, condition_names, list_images
from vfmvae.utils.progress import progress_enabled
from vfmvae.utils.safe_load import load_user_file, trusting_pickles


def _state_dict(path: str) -> dict:
    obj = load_user_file(path, what="tokenizer weights")
    for key in ("G_ema", "ema", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def build_tokenizer(preset: str, weights: str | None, device: str, official: dict | None = None):
    """Our preset (+ our state dict), PRESET `official`: a released `.pth` through `from_official`, or any
    tokenizer kind given as a folder or a baseline preset (`vfmvae.tokenizer.sources.load_any_tokenizer`)."""
    from vfmvae.tokenizer import VFMVAE, from_official
    from vfmvae.tokenizer.sources import is_baseline_preset, load_any_tokenizer

    if preset == "official":
        if not weights or not official:
            raise SystemExit("tokenizer:official needs @RELEASE.pth and --tokenizer-kwargs JSON (official G_kwargs)")
        model = from_official(
            weights,
            official["generator_kwargs"],
            official.get("vfm_config"),
            vfm_pretrained=official.get("vfm_pretrained"),
            vfm_dtype="float32",
        )
        return model.to(device).eval()
    if (weights and Path(weights).is_dir()) or is_baseline_preset(preset):
        # Any tokenizer kind through the interface: an export folder (VFM-VAE, VA-VAE, SD-VAE), a diffusers
        # folder, a released VA-VAE file with a baseline preset, or a random baseline preset.
        return load_any_tokenizer(weights, preset, vfm_config={"compute_dtype": "float32"}).to(device)
    model = VFMVAE(preset, vfm_config={"compute_dtype": "float32"})
    if weights:
        model.load_state_dict(_state_dict(weights), strict=True)
    return model.to(device).eval()


def write_demo_images(folder: Path, count: int, resolution: int, seed: int) -> Path:
    """Deterministic square crops of the colour photos shipped in scikit-image (no download) as PNGs."""
    from PIL import Image
    from skimage import data

    photos = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)][..., :3]
        side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side].astype(np.uint8))
        crop.resize((resolution, resolution), Image.LANCZOS).save(folder / f"demo_{i:04d}.png")
    return folder


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    se_rows = [r for r in rows if r["feature"] == "pooled" and r["condition"] != AGGREGATE_NAME]
    dit_rows = [r for r in rows if r["feature"] != "pooled"]
    panels = [p for p in (("conditions", se_rows), ("blocks", dit_rows)) if p[1]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4), squeeze=False)
    for ax, (kind, subset) in zip(axes[0], panels):
        for model in dict.fromkeys(r["model"] for r in subset):
            pts = [r for r in subset if r["model"] == model]
            xs = [r["condition"] if kind == "conditions" else r["feature"] for r in pts]
            ax.plot(range(len(xs)), [r["cknna"] for r in pts], marker="o", label=model)
            ax.set_xticks(range(len(xs)), xs, rotation=45, ha="right", fontsize=7)
        k = subset[0].get("topk", 10)
        ax.set_ylabel(f"CKNNA (k={k})" if kind == "conditions" else f"CKNNA (k={k}) vs reference, clean")
        ax.set_title("SE-CKNNA per condition" if kind == "conditions" else "DiT blocks, t = 0.5, null label")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae se-cknna", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", default=None, help="folder of PNG evaluation images (10k ImageNet-val in the paper)")
    p.add_argument("--demo", type=int, default=None, help="instead of --images: N crops of scikit-image photos")
    p.add_argument("--num-images", type=int, default=None, help="use the first N images (error if fewer)")
    p.add_argument("--reference", default="dinov2-large", help="reference VFM: PRESET[@WEIGHTS] (DINOv2 or SigLIP)")
    p.add_argument("--reference-config", default=None, help="JSON overrides for the reference VFM config")
    p.add_argument("--model", action="append", default=[], help="KIND:PRESET[@WEIGHTS] (repeatable)")
    p.add_argument("--tokenizer", default=None, help="PRESET[@WEIGHTS] that encodes latents for DiT models")
    p.add_argument("--latent-stats", default=None, help="latents_stats.pt (mean/std) of the DiT's training latents")
    p.add_argument(
        "--tokenizer-kwargs",
        default=None,
        help='JSON file for `tokenizer:official`: {"generator_kwargs": G_kwargs, "vfm_config": {...}, '
        '"vfm_pretrained": SigLIP2 folder}',
    )
    p.add_argument("--dit-kwargs", default="{}", help="JSON constructor kwargs for `official` DiT checkpoints")
    p.add_argument("--cls-vfm", default="dinov2-base", help="PRESET[@WEIGHTS] for REG's class token (DINOv2-B)")
    p.add_argument("--cls-vfm-config", default=None, help="JSON overrides for --cls-vfm")
    p.add_argument("--noise-fraction", type=float, default=0.5, help="DiT probe noise level s (paper t = 0.5)")
    p.add_argument("--noise-levels", type=float, nargs="+", default=list(NOISE_LEVELS))
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", default="outputs/se_cknna")
    add_trust_pickle_argument(p)
    add_progress_argument(p)
    return p


def run(argv: list[str] | None = None) -> list[dict]:
    """The result rows (raises on bad input; `main` turns that into one line)."""
    args = build_parser().parse_args(argv)
    with trusting_pickles(args.trust_pickle), progress_enabled(not args.no_progress):
        return _run(args)


def _run(args: argparse.Namespace) -> list[dict]:
    if not args.model:
        raise SystemExit("give at least one --model KIND:PRESET[@WEIGHTS]")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if (args.images is None) == (args.demo is None):
        raise SystemExit("give exactly one of --images DIR or --demo N")
    if args.demo is not None:
        args.images = str(write_demo_images(Path(args.out_dir) / "demo_images", args.demo, args.resolution, args.seed))
    paths = list_images(args.images)
    if args.num_images is not None:
        if len(paths) < args.num_images:
            raise SystemExit(f"{args.images} holds {len(paths)} PNG images, fewer than the {args.num_images} requested")
        paths = paths[: args.num_images]
    specs = [parse_spec(s) for s in args.model]
    official = json.loads(Path(args.tokenizer_kwargs).read_text()) if args.tokenizer_kwargs else None
    _, ref_preset, ref_weights = parse_spec(args.reference, default_kind="vfm")
    ref_extractor, _ = build_vfm_extractor(ref_preset, ref_weights, device, json.loads(args.reference_config or "{}"))
    conditions = condition_names(args.noise_levels)
    common = dict(
        noise_levels=args.noise_levels, resolution=args.resolution, seed=args.seed, batch_size=args.batch_size
    )
    needs_se = any(k in ("vfm", "tokenizer") for k, _, _ in specs)
    ref_conditions = conditions if needs_se else ["clean"]
    ref_feats = extract_condition_features(
        ref_extractor, paths, ref_conditions, desc=f"reference {ref_preset}", **common
    )
    rows: list[dict] = []
    latents = cls_tokens = None
    for kind, preset, weights in specs:
        name = f"{kind}:{preset}"
        if kind in ("vfm", "tokenizer"):
            if kind == "vfm":
                extractor, _ = build_vfm_extractor(preset, weights, device)
            else:
                extractor = TokenizerSEExtractor(
                    build_tokenizer(preset, weights, device, official).encode, device=device, seed=args.seed
                )
            feats = extract_condition_features(extractor, paths, conditions, desc=name, **common)
            for cond, value in se_cknna(feats, ref_feats, topk=args.topk).items():
                rows.append({"model": name, "feature": "pooled", "condition": cond, "cknna": value})
            continue
        if latents is None:
            if args.tokenizer is None:
                raise SystemExit("DiT models need --tokenizer PRESET[@WEIGHTS] to encode the images")
            _, tok_preset, tok_weights = parse_spec(args.tokenizer, default_kind="tokenizer")
            latents = encode_latents(
                build_tokenizer(tok_preset, tok_weights, device, official),
                paths,
                args.resolution,
                device,
                args.batch_size,
                args.seed,
            )
            mean, std = latent_stats(args.latent_stats, latents)
            latents = (latents - mean) / std
        model = build_dit(kind, preset, weights, json.loads(args.dit_kwargs), device)
        if model.class_token_dim is not None and cls_tokens is None:
            _, cls_preset, cls_weights = parse_spec(args.cls_vfm, default_kind="vfm")
            cls_tokens = image_class_tokens(
                cls_preset,
                cls_weights,
                json.loads(args.cls_vfm_config or "{}"),
                paths,
                args.resolution,
                device,
                args.batch_size,
            )
        gen = torch.Generator(device=device).manual_seed(args.seed)
        feats = dit_block_features(
            model,
            latents.to(device),
            noise_fraction=args.noise_fraction,
            class_tokens=None if model.class_token_dim is None else cls_tokens.to(device),
            batch_size=args.batch_size,
            generator=gen,
        )
        for feature, value in feats.items():
            rows.append(
                {
                    "model": name,
                    "feature": feature,
                    "condition": f"clean_t{args.noise_fraction:.2f}",
                    "cknna": cknna(value, ref_feats["clean"], topk=args.topk),
                }
            )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.update(reference=args.reference.partition("@")[0], n_images=len(paths), topk=args.topk)
    with open(out_dir / "se_cknna.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["model", "feature", "condition", "cknna", "reference", "n_images", "topk"]
        )
        writer.writeheader()
        writer.writerows(rows)
    write_plot(rows, out_dir / "se_cknna.png")
    for r in rows:
        print(f"{r['model']:<36}{r['feature']:<14}{r['condition']:<22}{r['cknna']:.4f}")
    print(f"wrote {out_dir / 'se_cknna.csv'} and {out_dir / 'se_cknna.png'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae se-cknna")
