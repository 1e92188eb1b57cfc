"""Sample N images from a diffusion checkpoint with the paper's sampler: PNGs + one ADM-layout `.npz`.

    vfmvae sample --ckpt RUN.ckpt --tokenizer TOKENIZER --out outputs/samples/run [--num-images 50000]
    make sample CKPT=... TOKENIZER=... [STATS=...] [NUM=50000] [OUT=...] [DEVICES=...]

Inputs (docs/design.md, "Evaluation protocol"):
* ``--ckpt``: a training checkpoint of `DiffusionModule` (its EMA weights, from the EMA callback's
  state; ``--weights raw`` for the live ones; the network is rebuilt from the saved hyper-parameters)
  or a released official file of a registered family (``--model lightningdit|reg``; the EMA entry is
  used; constructor kwargs are the paper runs' unless ``--official-kwargs`` gives a JSON/YAML).
* ``--tokenizer``: decoder source (a ``save_pretrained`` folder, or the official release ``.pth`` with
  ``--tokenizer-kwargs`` = its G_kwargs), or ``none`` for a random ``--tokenizer-preset`` decoder (tests).
* ``--latent-stats``: ``latents_stats.pt`` (ours or the official file); default: the statistics a
  training checkpoint recorded from its latent cache.

Protocol (the official VFM-VAE sampling + ``tools/decode``): the network's paper sampler (LightningDiT
``lightningdit-cfg``: Euler ODE, 250 points, shift 0.3, CFG 4.0 on channels 0-2 where t >= 0.125; REG
``reg-cfg``: Euler-Maruyama SDE, 250 points, CFG 4.0 + class-token CFG where t <= 0.8; ``--cfg-scale 1``
for the no-CFG numbers, ``--sampler`` for any `vfmvae.transport.SAMPLER_PRESETS` entry), the network in
**fp32** (TF32 matmuls allowed, as the official samplers; ``--precision bf16`` opts into bf16 autocast),
the decoder in fp32, and uint8 by **truncation** of ``clamp((x + 1) / 2, 0, 1) * 255`` (torchvision
``to_pil_image``, official ``tools/decode``; ``--uint8-mode round`` gives our earlier rounding).

Work is split into chunks of ``--chunk-size`` images; rank r of a DDP Lightning ``predict`` run takes the
unfinished chunks k with k % world == r (`lightning_modules.sampling`); finished chunks are kept on a
second run. Labels: ``random`` (randint(0, 1000), the paper's protocol) or ``balanced`` (image i gets
class i % 1000). When every chunk exists, rank 0 packs ``samples_{N}x{H}x{W}x3.npz`` with ``provenance``
(`vfmvae.utils.sample_store`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from callbacks.sample_writer import SampleWriter
from lightning_modules.sampling import SampleDataModule, SampleModule
from vfmvae.commands._errors import InputError, add_progress_argument, add_trust_pickle_argument, run_cli
from vfmvae.commands._sampling_args import add_decoder_arguments, add_sampler_arguments
from vfmvae.dit.loading import load_sampling_network
from vfmvae.dit.registry import network_families
from vfmvae.provenance import state_dict_sha256, to_jsonable
from vfmvae.provenance_checks import sampling_inputs
from vfmvae.tokenizer.loading import load_decoder
from vfmvae.transport.sampling import sampler_config
from vfmvae.utils.safe_load import trusting_pickles
from vfmvae.utils.sample_store import SEED_RULE, check_resume

log = logging.getLogger("sample")

# --precision: the paper protocol runs the network in fp32 (TF32 allowed); bf16 autocast is opt-in.
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "32-true": "32-true", "bf16-mixed": "bf16-mixed"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vfmvae sample", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--ckpt", required=True, help="DiffusionModule .ckpt or an official .pt")
    ap.add_argument("--model", choices=network_families(), help="network family of an official file")
    ap.add_argument("--official-kwargs", help="JSON/YAML constructor kwargs of an official file")
    ap.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="training checkpoints: EMA or live weights"
    )
    add_decoder_arguments(ap)
    ap.add_argument("--out", required=True, help="output folder (images/, chunks/, the .npz)")
    ap.add_argument("--num-images", type=int, default=50_000)
    ap.add_argument("--chunk-size", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward batch per process")
    ap.add_argument("--label-mode", choices=("random", "balanced"), default="random")
    ap.add_argument("--seed", type=int, default=0)
    add_sampler_arguments(ap)
    ap.add_argument("--cfg-channels", default="preset", help="'preset', 'all' or a number (LightningDiT quirk: 3)")
    ap.add_argument(
        "--uint8-mode",
        choices=("truncate", "round"),
        default="truncate",
        help="float -> uint8: 'truncate' = the paper protocol (official tools/decode, to_pil_image); "
        "'round' = round to nearest (this project's earlier rule)",
    )
    ap.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="network precision: 'fp32' = the paper protocol (TF32 matmuls allowed on GPU), 'bf16' = bf16 autocast",
    )
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--devices", default="auto")
    ap.add_argument("--num-nodes", type=int, default=1)
    add_trust_pickle_argument(ap)
    add_progress_argument(ap)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.num_images < 1 or args.chunk_size < 1 or args.batch_size < 1:
        ap.error("--num-images, --chunk-size and --batch-size must be >= 1")
    return args


def run(argv: list[str] | None = None) -> Path | None:
    """The packed ``.npz`` (None on a rank that does not pack); raises on bad input, `main` makes it one line."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with trusting_pickles(args.trust_pickle):
        try:
            inputs = _load_inputs(args)
        except (ValueError, KeyError) as err:  # the inputs do not fit together: one line, nothing written
            raise InputError(str(err).strip("'\"")) from err
    return _sample(args, *inputs)


def _load_inputs(args: argparse.Namespace):
    """The network, decoder, statistics, sampler and provenance; refuses inputs that do not fit together."""
    net, family, net_record, train_prov = load_sampling_network(
        args.ckpt, args.model, args.weights, args.official_kwargs
    )
    tokenizer = None if args.tokenizer.lower() == "none" else args.tokenizer
    decoder = load_decoder(tokenizer, args.tokenizer_preset, args.tokenizer_kwargs)
    normalizer, export_hash, cache_hash = sampling_inputs(
        decoder, train_prov, args.latent_stats, args.allow_tokenizer_mismatch
    )
    if normalizer.num_channels != net.latent_shape[0]:
        raise ValueError(
            f"latent statistics have {normalizer.num_channels} channels, the network {net.latent_shape[0]}"
        )
    config = sampler_config(
        net, args.sampler, cfg_scale=args.cfg_scale, num_steps=args.num_steps, cfg_channels=args.cfg_channels
    )
    precision = PRECISIONS[args.precision]
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    provenance = {
        "num_images": args.num_images,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "seed_rule": SEED_RULE,
        "label_mode": args.label_mode,
        "sampler": to_jsonable(config),
        "precision": "bf16" if precision.startswith("bf16") else "fp32",
        "uint8_mode": args.uint8_mode,
        "family": family,
        "network": net_record,
        "network_sha256": state_dict_sha256(net),
        "tokenizer": {
            "source": tokenizer,
            "preset": args.tokenizer_preset if tokenizer is None else None,
            "export_sha256": export_hash,  # the export's weights hash (as in the latent-cache manifest)
            "latent_cache_sha256": cache_hash,
        },
        "tokenizer_sha256": state_dict_sha256(decoder),
        "latent_stats": {"source": args.latent_stats or "checkpoint", **normalizer.stats_dict()},
        "training_provenance": train_prov,
    }
    check_resume(out, to_jsonable(provenance))
    return net, decoder, normalizer, config, precision, out, provenance


def _sample(args, net, decoder, normalizer, config, precision, out, provenance) -> Path | None:
    if precision == "32-true" and torch.cuda.is_available():
        # The official samplers run fp32 with TF32 matmuls (`torch.backends.cuda.matmul.allow_tf32 = True`).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    devices = args.devices if args.devices == "auto" else int(args.devices)
    writer = SampleWriter(out, provenance)
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        precision=precision,
        logger=False,
        callbacks=[writer],
        use_distributed_sampler=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress,  # Lightning's predict bar: batches, rate and time left (rank 0)
        inference_mode=True,
    )
    module = SampleModule(net, decoder, normalizer, config, args.label_mode, args.seed, uint8_mode=args.uint8_mode)
    dm = SampleDataModule(out, args.num_images, args.chunk_size, args.batch_size)
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return writer.npz_path


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae sample")
