"""Cache tokenizer latents of an ImageFolder split for diffusion training (image + flip, resumable).

See docs/design.md, "Latent normalisation"::

    vfmvae cache-latents --data-root /data/imagenet/train --tokenizer exports/vfmvae \
        --out latents/imagenet256 [--devices 8 --num-nodes 1] [--store-images]

Each image is `adm_center`-cropped; the posterior moments of the image and of its horizontal flip are
stored in safetensors shards with a manifest (tokenizer config and weights hash, latent shape, counts,
per-shard checksums, unreadable images) and `latents_stats.pt`. Running it again, or after a crash,
continues where it stopped: finished shards are verified and kept, partial ones redone.
`--store-images` also keeps the uint8 crops (REG computes its DINOv2 targets from pixels).
"""

from __future__ import annotations

import argparse
import logging

import torch

from datamodules.key_filter import load_key_list
from datamodules.latent_cache import LatentCacheDataModule
from lightning_modules.latent_cache import LatentShardWriter, cache_latents
from vfmvae.commands._errors import add_progress_argument, add_trust_pickle_argument, run_cli
from vfmvae.tokenizer.sources import load_any_tokenizer, tokenizer_record
from vfmvae.utils.safe_load import trusting_pickles


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae cache-latents", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", required=True, help="ImageFolder split (root/<class>/<image>)")
    p.add_argument(
        "--tokenizer", required=True, help="export folder (any kind), diffusers folder, release file, or 'none'"
    )
    p.add_argument(
        "--tokenizer-preset", help="preset: of a random ('none') tokenizer, or a baseline preset for a VA-VAE file"
    )
    p.add_argument(
        "--tokenizer-kwargs", help="official VFM-VAE generator kwargs / VA-VAE config YAML of a release file"
    )
    p.add_argument("--vfm-path", help="local SigLIP2 folder, when the tokenizer export does not include its VFM")
    p.add_argument("--out", required=True, help="cache folder (created; reused to resume)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64, help="images per device per step (each is encoded twice)")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--filter-keys", help="optional key list (vfmvae make-filter-list) of images to keep")
    p.add_argument("--store-images", action="store_true", help="also store the uint8 crops (needed by REG)")
    p.add_argument("--moments-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--stats-samples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--num-nodes", type=int, default=1)
    add_trust_pickle_argument(p)
    add_progress_argument(p)
    return p


def tokenizer_provenance(model: torch.nn.Module, path: str) -> dict:
    """The tokenizer's record (`vfmvae.tokenizer.sources.tokenizer_record`: kind, weights hash, config, latent
    channels, downsampling factor) and the path it was given as."""
    return {"path": str(path), **tokenizer_record(model)}


def run(argv: list[str] | None = None) -> dict:
    """The manifest's provenance (raises on bad input; `main` turns that into one line)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with trusting_pickles(args.trust_pickle):
        tokenizer = load_any_tokenizer(
            args.tokenizer, args.tokenizer_preset, args.tokenizer_kwargs, vfm_pretrained=args.vfm_path
        )
        keep = load_key_list(args.filter_keys) if args.filter_keys else None
    dm = LatentCacheDataModule(
        args.data_root,
        args.out,
        image_size=args.image_size,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        keep_keys=keep,
    )
    dm.setup()
    provenance = {"tokenizer": tokenizer_provenance(tokenizer, args.tokenizer), "num_classes": len(dm.source.classes)}
    writer = LatentShardWriter(
        store_images=args.store_images, stats_samples=args.stats_samples, seed=args.seed, provenance=provenance
    )
    devices = args.devices if args.devices == "auto" else int(args.devices)
    cache_latents(
        tokenizer,
        dm,
        writer,
        args.moments_dtype,
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        enable_progress_bar=not args.no_progress,  # Lightning's predict bar: batches, rate and time left (rank 0)
    )
    return provenance


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae cache-latents")
