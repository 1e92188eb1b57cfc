"""Representation dynamics: CKNNA of every diffusion block with a reference VFM, per training checkpoint.

    vfmvae dynamics --checkpoints run/checkpoints/step=010000.ckpt run/checkpoints/step=050000.ckpt ... \
        --images VAL_10K_PNG_DIR --tokenizer outputs/tokenizer/export --reference dinov2-large@WEIGHTS \
        [--config configs/analyses/dynamics.yaml] [--latent-stats latents_stats.pt] [--out-dir outputs/dynamics]

The paper's representation-dynamics figure (docs/analyses.md, "Representation dynamics"): the SE-CKNNA
diffusion-block protocol (docs/design.md, "SE-CKNNA": clean images, posterior-sample latents normalised with
the run's statistics, noise at t = 0.5, null label, token-mean features of the embedder, every block, the
final layer and REG's projector) repeated for each checkpoint, with the same noise draw. Checkpoints are
`DiffusionModule` training checkpoints (EMA weights by default; `--weights raw`) or released official files
(`--model lightningdit|reg`). Latent statistics: `--latent-stats`, else those recorded in each checkpoint,
else per-channel statistics of the probe latents. REG's class token comes from `--cls-vfm` (DINOv2-B).
Columns are sorted by training step when every checkpoint records one (`--keep-order`: as given). Writes
dynamics.csv, dynamics.json and the heat map dynamics.png to `--out-dir` and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vfmvae.commands._errors import InputError, add_progress_argument, add_trust_pickle_argument, run_cli

DEFAULTS = {
    "reference": "dinov2-large",
    "cls_vfm": "dinov2-base",
    "noise_fraction": 0.5,
    "topk": 10,
    "resolution": 256,
    "batch_size": 32,
    "seed": 42,
    "weights": "ema",
    "device": "auto",
    "out_dir": "outputs/dynamics",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae dynamics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=None, help="YAML of option defaults (configs/analyses/dynamics.yaml)")
    p.add_argument("--checkpoints", nargs="+", default=None, help="diffusion checkpoints, in training order")
    p.add_argument("--model", default=None, help="network family of official release files (lightningdit, reg)")
    p.add_argument("--official-kwargs", default=None, help="JSON/YAML constructor kwargs for official files")
    p.add_argument("--weights", choices=("ema", "raw"), help="training checkpoints: EMA (default) or live weights")
    p.add_argument("--images", default=None, help="folder of PNG probe images (10k ImageNet val in the paper)")
    p.add_argument("--num-images", type=int, default=None, help="the first N images (stem order)")
    p.add_argument("--tokenizer", default=None, help="export folder or official release file that encodes the images")
    p.add_argument(
        "--tokenizer-preset",
        default=None,
        help="preset of a released baseline file (e.g. vavae-f16d32), or of a random one",
    )
    p.add_argument("--tokenizer-kwargs", default=None, help="official G_kwargs / ddconfig YAML of a release file")
    p.add_argument("--vfm-path", default=None, help="local VFM folder when the tokenizer needs one")
    p.add_argument("--latent-stats", default=None, help="latents_stats.pt of the diffusion run's latents")
    p.add_argument("--reference", help="reference VFM: PRESET[@WEIGHTS] (DINOv2 or SigLIP)")
    p.add_argument("--reference-config", default=None, help="JSON overrides for the reference VFM config")
    p.add_argument("--cls-vfm", help="PRESET[@WEIGHTS] of REG's class-token VFM (DINOv2-B)")
    p.add_argument("--noise-fraction", type=float, help="noise level s of the probe (paper t = 0.5)")
    p.add_argument("--topk", type=int)
    p.add_argument("--resolution", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda[:i]")
    p.add_argument("--out-dir")
    p.add_argument(
        "--keep-order", action="store_true", help="columns in the order given (default: by training step when known)"
    )
    add_trust_pickle_argument(p)
    add_progress_argument(p)
    p.set_defaults(**DEFAULTS)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options from the command line over ``--config`` defaults over :data:`DEFAULTS`."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        path = Path(pre.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} not found")
        values = yaml.safe_load(path.read_text()) or {}
        known = {a.dest for a in parser._actions} - {"help", "config"}
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    for name in ("checkpoints", "images", "tokenizer"):
        if not getattr(args, name):
            raise InputError(f"--{name.replace('_', '-')} is required (see vfmvae dynamics --help)")
    return args


def run(argv: list[str] | None = None, *, reference_extractor=None) -> list[dict]:
    """The rows (raises on bad input; `main` turns that into one line). ``reference_extractor`` (an SE
    extractor: ``.clean(uint8 (B, H, W, 3)) -> (B, D)``) stands in for the network built from ``--reference``."""
    from vfmvae.utils.progress import progress_enabled
    from vfmvae.utils.safe_load import trusting_pickles

    args = parse_args(argv)
    with trusting_pickles(args.trust_pickle), progress_enabled(not args.no_progress):
        return _run(args, reference_extractor)


def _run(args: argparse.Namespace, reference_extractor) -> list[dict]:
    import torch

    from vfmvae.dit.loading import load_sampling_network
    from vfmvae.metrics.dynamics import block_cknna, dynamics_rows, write_dynamics
    from vfmvae.metrics.se_cknna import extract_condition_features
    from vfmvae.metrics.se_models import build_vfm_extractor, encode_latents, parse_spec
    from vfmvae.metrics.se_transforms import list_images
    from vfmvae.tokenizer.loading import load_latent_stats
    from vfmvae.tokenizer.sources import load_any_tokenizer

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    for ckpt in args.checkpoints:
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    paths = list_images(args.images)
    if args.num_images is not None:
        if len(paths) < args.num_images:
            raise InputError(f"{args.images} holds {len(paths)} PNG images, fewer than the {args.num_images} requested")
        paths = paths[: args.num_images]
    if len(paths) <= args.topk:
        raise InputError(f"CKNNA with --topk {args.topk} needs more than {args.topk} images, got {len(paths)}")
    try:  # the spec strings are checked before any network is built
        for spec in [args.reference] + ([args.cls_vfm] if args.cls_vfm else []):
            parse_spec(spec, default_kind="vfm")
    except (KeyError, ValueError) as err:
        raise InputError(str(err)) from err
    if reference_extractor is None:
        _, ref_preset, ref_weights = parse_spec(args.reference, default_kind="vfm")
        config = json.loads(args.reference_config or "{}")
        reference_extractor, _ = build_vfm_extractor(ref_preset, ref_weights, device, config)
    common = dict(resolution=args.resolution, seed=args.seed, batch_size=args.batch_size)
    reference = extract_condition_features(reference_extractor, paths, ["clean"], **common)["clean"]
    # Any tokenizer kind (paper Table 1 compares VFM-VAE, VA-VAE and SD-VAE latents under the same training).
    tokenizer = load_any_tokenizer(
        args.tokenizer, args.tokenizer_preset, args.tokenizer_kwargs, vfm_pretrained=args.vfm_path, vfm_dtype="float32"
    )
    latents = encode_latents(
        tokenizer.to(device).eval().float(), paths, args.resolution, device, args.batch_size, args.seed
    )
    del tokenizer
    results, class_tokens = [], None
    for ckpt in args.checkpoints:
        try:
            net, _, record, provenance = load_sampling_network(ckpt, args.model, args.weights, args.official_kwargs)
        except (KeyError, ValueError) as err:  # not a diffusion checkpoint, no EMA state, another family
            raise InputError(f"{ckpt}: {err}") from err
        net = net.to(device).float()
        stats = provenance.get("latent_stats")
        if args.latent_stats is None and stats is None:  # per-channel statistics of the probe latents
            stats = {"mean": latents.mean((0, 2, 3)), "std": latents.std((0, 2, 3))}
        normalizer = load_latent_stats(args.latent_stats, stats)
        if normalizer.mean.shape[1] != latents.shape[1]:
            raise InputError(
                f"{ckpt}: latent statistics have {normalizer.mean.shape[1]} channels, latents {latents.shape[1]}"
            )
        x = normalizer.normalize(latents)
        if net.class_token_dim is not None and class_tokens is None:
            class_tokens = _class_tokens(args, paths, device)
        values = block_cknna(
            net,
            x,
            reference,
            class_tokens=class_tokens if net.class_token_dim is not None else None,
            noise_fraction=args.noise_fraction,
            topk=args.topk,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        results.append((ckpt, record.get("global_step"), values))
        del net
    if not args.keep_order and all(step is not None for _, step, _ in results):
        results.sort(key=lambda r: r[1])  # a shell glob sorts step=10000 before step=2000
    rows = dynamics_rows(results)
    meta = {
        "reference": args.reference.partition("@")[0] if isinstance(args.reference, str) else "injected",
        "noise_fraction": args.noise_fraction,
        "topk": args.topk,
        "n_images": len(paths),
        "weights": args.weights,
        "tokenizer": str(args.tokenizer),
        "seed": args.seed,
    }
    written = write_dynamics(rows, args.out_dir, meta)
    _print_table(rows)
    print(f"wrote {written['csv']}, {written['json']} and {written['png']}")
    return rows


def _class_tokens(args, paths, device):
    """REG's class token of each probe image (DINOv2-B CLS of the image at 224 px, official rule)."""
    from vfmvae.metrics.se_models import image_class_tokens, parse_spec

    _, preset, weights = parse_spec(args.cls_vfm, default_kind="vfm")
    return image_class_tokens(preset, weights, {}, paths, args.resolution, device, args.batch_size)


def _print_table(rows: list[dict]) -> None:
    from vfmvae.metrics.dynamics import dynamics_matrix, dynamics_summary

    values, names, labels = dynamics_matrix(rows)
    print("| feature | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, line in zip(names, values):
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in line) + " |")
    summary = dynamics_summary(rows)
    for key in ("mean_over_blocks", "max_over_blocks"):
        print(f"| **{key}** | " + " | ".join(f"{s[key]:.4f}" if s[key] is not None else "n/a" for s in summary) + " |")
    print("| **argmax_block** | " + " | ".join(str(s["argmax_block"]) for s in summary) + " |")


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae dynamics")
