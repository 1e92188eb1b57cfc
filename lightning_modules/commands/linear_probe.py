"""Linear probe of tokenizer latents: top-1 of a linear classifier on cached latents (paper Table 1).

    vfmvae linear-probe --train-latents CACHE_TRAIN --val-latents CACHE_VAL [--out outputs/linear_probe]
    vfmvae linear-probe --tokenizer EXPORT --data-root IMAGENET [--tokenizer-preset P] [--image-size 256]

The second form first caches ``DATA_ROOT/train`` and ``DATA_ROOT/val`` (ImageFolder splits) with the tokenizer
(any kind: `vfmvae.tokenizer.sources.load_any_tokenizer`) into ``OUT/latents/{train,val}`` (kept for the next
run). The run itself is ``vfmvae fit --config configs/analyses/linear_probe.yaml`` with the caches, the protocol
options below and ``OUT`` filled in (docs/analyses.md, "Linear probe"); it writes the metric record
``OUT/linear_probe.json`` (kind ``linear_probe``, ``results.top1`` in percent) and prints top-1.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

# The repository's config, found from any working directory.
from vfmvae.commands._errors import InputError, run_cli

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "analyses" / "linear_probe.yaml")
PROTOCOL_FIELDS = ("optimizer", "base_lr", "epochs", "warmup_epochs", "weight_decay", "augmentation", "normalization")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfmvae linear-probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--train-latents", help="latent cache of the training split")
    p.add_argument("--val-latents", help="latent cache of the validation split")
    p.add_argument("--tokenizer", help="instead of caches: a tokenizer (export folder, release file, or 'none')")
    p.add_argument(
        "--tokenizer-preset", help="preset of a random ('none') tokenizer, or a baseline preset for a VA-VAE file"
    )
    p.add_argument(
        "--tokenizer-kwargs", help="official VFM-VAE generator kwargs / VA-VAE config YAML of a release file"
    )
    p.add_argument("--vfm-path", help="local SigLIP2 folder when a VFM-VAE export does not include its VFM")
    p.add_argument("--data-root", help="with --tokenizer: ImageFolder root holding train/ and val/")
    p.add_argument("--image-size", type=int, default=256, help="with --tokenizer: crop size of the cached images")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="run config (default configs/analyses/linear_probe.yaml)")
    p.add_argument("--out", default="outputs/linear_probe", help="output folder (record, TensorBoard, caches)")
    p.add_argument("--protocol", help="vfmvae.probe.PROBE_PROTOCOLS name (default: the config's, 'mae')")
    p.add_argument("--global-batch-size", type=int, help="images per step over all processes")
    p.add_argument("--optimizer", choices=("lars", "sgd"))
    p.add_argument("--base-lr", type=float, help="learning rate per 256 images")
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--augmentation", choices=("flip", "none"))
    p.add_argument("--normalization", choices=("batchnorm", "none"))
    p.add_argument("--accelerator", help="trainer accelerator (default: the config's)")
    p.add_argument("--devices", help="trainer devices (default: the config's)")
    p.add_argument("--num-workers", type=int, help="data loader workers")
    p.add_argument("--seed", type=int, help="seed_everything (default: the config's)")
    return p


def _cache_splits(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    from lightning_modules.latent_cache import cache_image_folder
    from vfmvae.tokenizer.sources import load_any_tokenizer

    if not args.data_root:
        raise InputError("--tokenizer needs --data-root (an ImageFolder root with train/ and val/)")
    tokenizer = load_any_tokenizer(args.tokenizer, args.tokenizer_preset, args.tokenizer_kwargs,
                                   vfm_pretrained=args.vfm_path, vfm_config={"compute_dtype": "float32"})  # fmt: skip
    roots = []
    for split in ("train", "val"):
        folder = Path(args.data_root) / split
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder (DATA_ROOT must hold train/ and val/)")
        target = out / "latents" / split
        cache_image_folder(tokenizer, str(folder), str(target), image_size=args.image_size,
                           provenance={"path": args.tokenizer}, accelerator=args.accelerator or "auto", devices=1)  # fmt: skip
        roots.append(str(target))
    return roots[0], roots[1]


def cli_arguments(args: argparse.Namespace, train: str, val: str, out: Path) -> list[str]:
    """The `vfmvae fit` argument list of this probe run."""
    argv = ["fit", "--config", args.config, f"--data.init_args.train_root={train}", f"--data.init_args.val_root={val}",
            f"--model.init_args.record_path={out / 'linear_probe.json'}",
            f"--trainer.logger.init_args.save_dir={out / 'tb'}"]  # fmt: skip
    if args.protocol:
        argv.append(f"--model.init_args.protocol={args.protocol}")
    overrides = {f: getattr(args, f) for f in PROTOCOL_FIELDS if getattr(args, f) is not None}
    if overrides:
        argv.append(f"--model.init_args.protocol_overrides={json.dumps(overrides)}")
    if args.global_batch_size is not None:
        argv.append(f"--model.init_args.global_batch_size={args.global_batch_size}")
    for flag, key in (("accelerator", "trainer.accelerator"), ("devices", "trainer.devices"),
                      ("num_workers", "data.init_args.num_workers"), ("seed", "seed_everything")):  # fmt: skip
        if getattr(args, flag) is not None:
            argv.append(f"--{key}={getattr(args, flag)}")
    return argv


def run(argv: list[str] | None = None) -> dict | None:
    """The validation result (rank 0; ``None`` on other ranks); raises `InputError` on inputs that do not fit."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.tokenizer is not None:
        if args.train_latents or args.val_latents:
            raise InputError("give either --tokenizer/--data-root or --train-latents/--val-latents")
        train, val = _cache_splits(args, out)
    elif args.train_latents and args.val_latents:
        train, val = args.train_latents, args.val_latents
    else:
        raise InputError("give --train-latents and --val-latents (or --tokenizer and --data-root)")
    from lightning_modules.cli import main as cli_main

    cli = cli_main(cli_arguments(args, train, val, out))
    if not cli.trainer.is_global_zero:
        return None
    result = cli.model.result
    if result is None:
        raise RuntimeError("vfmvae linear-probe: the run ended without a validation result")
    print(f"linear probe top-1: {result['top1']:.2f} % ({result['correct']}/{result['num_images']} validation "
          f"latents, {result['epoch']} epochs) -> {out / 'linear_probe.json'}")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae linear-probe")
