"""Sample images for a list of prompts from a text-to-image checkpoint: PNGs + an ADM-layout `.npz`.

    vfmvae sample-t2i --ckpt RUN.ckpt --prompts prompts.txt --tokenizer TOKENIZER --out outputs/t2i_samples
    make sample-t2i CKPT=... PROMPTS=prompts.txt TOKENIZER=... [OUT=...] [PER_PROMPT=1] [CFG=4.0] [STEPS=250]

Image ``i`` is drawn for prompt ``i mod P`` (``P`` prompts, ``--per-prompt`` images each; prompts file: one
per line, or a ``.jsonl`` with ``prompt``/``caption``/``text``), written as ``images/{i:06d}.png`` and
listed in ``prompts.jsonl`` (``{"index", "prompt_index", "prompt"}``), so evaluation tools pair images
and prompts. Sampling is the network's paper sampler (``lightningdit-cfg-allchannels``: Euler ODE, CFG on
every channel where t >= 0.125; ``--cfg-scale 1`` without CFG) through the same Lightning ``predict``
run as `vfmvae sample` (`lightning_modules.sampling`): chunks, seeds from (seed, first image index),
a second run with the same settings resumes and redoes nothing finished (docs/design.md, "Sampling and
guidance"; docs/text_to_image.md, "Training and sampling").

Inputs are checked as by `vfmvae sample` (`vfmvae.provenance_checks.sampling_inputs`): ``--tokenizer`` must be
the tokenizer the latent cache was made with (``--allow-tokenizer-mismatch`` opts out), ``--latent-stats``
the statistics the checkpoint trained with, and the frozen text encoder rebuilt from ``text_encoder_path``
the one whose weights hash the checkpoint records (`vfmvae.text.weights_record`); each refusal is one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lightning.pytorch import Trainer

from callbacks.sample_writer import SampleWriter
from lightning_modules.sampling import SampleDataModule, SampleModule
from vfmvae.commands._errors import InputError, run_cli
from vfmvae.commands._sampling_args import add_decoder_arguments, add_sampler_arguments
from vfmvae.dit.loading import load_sampling_network
from vfmvae.provenance import state_dict_sha256, to_jsonable
from vfmvae.provenance_checks import sampling_inputs
from vfmvae.text.weights_record import check_text_encoders
from vfmvae.tokenizer.loading import load_decoder
from vfmvae.transport.sampling import sampler_config
from vfmvae.utils.safe_load import trusting_pickles
from vfmvae.utils.sample_store import SEED_RULE, check_resume, write_json_atomic

log = logging.getLogger("sample_t2i")

__all__ = ["build_parser", "main", "run", "read_prompts"]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a ``.txt`` (one per non-empty line) or ``.jsonl`` file; an empty list is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(lines, 1):
            obj = json.loads(line)
            text = next((obj[k] for k in ("prompt", "caption", "text") if k in obj), None)
            if not isinstance(text, str):
                raise ValueError(f"{path}:{n}: no 'prompt' (or 'caption'/'text') string")
            prompts.append(text.strip())
        lines = prompts
    if not lines:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vfmvae sample-t2i", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="DiffusionModule checkpoint of a text_dit network")
    ap.add_argument("--prompts", required=True, help="prompts file: .txt (one per line) or .jsonl")
    add_decoder_arguments(ap)
    ap.add_argument("--out", required=True, help="output folder (images/, chunks/, prompts.jsonl, the .npz)")
    ap.add_argument("--per-prompt", type=int, default=1, help="images per prompt")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", choices=("ema", "raw"), default="ema")
    add_sampler_arguments(ap)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--devices", default="auto")
    ap.add_argument("--trust-pickle", action="store_true", help="allow unpickling the checkpoint (trusted files only)")
    return ap


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if min(args.per_prompt, args.chunk_size, args.batch_size) < 1:
        raise InputError("--per-prompt, --chunk-size and --batch-size must be >= 1")
    prompts = read_prompts(args.prompts)
    tokenizer = None if args.tokenizer.lower() == "none" else args.tokenizer
    try:  # the inputs must be the run's own (as `vfmvae sample`): one line, nothing written
        with trusting_pickles(args.trust_pickle):
            net, family, net_record, train_prov = load_sampling_network(args.ckpt, None, args.weights)
        if not hasattr(net.condition, "prompts"):
            raise InputError(f"{args.ckpt} holds a {family} network, not a text-conditioned one")
        if train_prov:  # an export or training checkpoint: its frozen text encoder must be the one trained with
            check_text_encoders(net, train_prov.get("text_encoders"), source=f"the checkpoint {args.ckpt}")
        decoder = load_decoder(tokenizer, args.tokenizer_preset, args.tokenizer_kwargs)
        normalizer, export_hash, cache_hash = sampling_inputs(
            decoder, train_prov, args.latent_stats, args.allow_tokenizer_mismatch
        )
        if normalizer.num_channels != net.latent_shape[0]:
            raise InputError(
                f"latent statistics have {normalizer.num_channels} channels, the network {net.latent_shape[0]}"
            )
    except (ValueError, KeyError) as err:
        raise InputError(str(err).strip("'\"")) from err
    net.condition.prompts = tuple(prompts)  # "balanced" draws: image i gets prompt i mod P
    config = sampler_config(net, args.sampler, cfg_scale=args.cfg_scale, num_steps=args.num_steps)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    num_images = len(prompts) * args.per_prompt
    provenance = {
        "num_images": num_images,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "seed_rule": SEED_RULE,
        "label_mode": "prompts",
        "prompts_file": str(args.prompts),
        "prompts": prompts,
        "sampler": to_jsonable(config),
        "precision": args.precision,
        "uint8_mode": "truncate",
        "family": family,
        "network": net_record,
        "network_sha256": state_dict_sha256(net),
        "tokenizer": {
            "source": tokenizer,
            "preset": args.tokenizer_preset if tokenizer is None else None,
            "export_sha256": export_hash,
            "latent_cache_sha256": cache_hash,
        },
        "tokenizer_sha256": state_dict_sha256(decoder),
        "training_provenance": train_prov,
    }
    check_resume(out, to_jsonable(provenance))
    if json.loads((out / "sampling.json").read_text()).get("prompts") != prompts:
        raise InputError(f"{out} holds samples of other prompts; use a new --out")
    listing = out / "prompts.jsonl"
    if not listing.is_file():
        rows = [
            {"index": i, "prompt_index": i % len(prompts), "prompt": prompts[i % len(prompts)]}
            for i in range(num_images)
        ]
        write_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_json_atomic(out / "prompts.json", {"prompts": prompts, "per_prompt": args.per_prompt})
        listing.write_text(write_text, encoding="utf-8")
    devices = args.devices if args.devices == "auto" else int(args.devices)
    writer = SampleWriter(out, provenance)
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=devices,
        precision="32-true" if args.precision == "fp32" else "bf16-mixed",
        logger=False,
        callbacks=[writer],
        use_distributed_sampler=False,
        enable_model_summary=False,
        inference_mode=True,
        enable_progress_bar=False,
    )
    module = SampleModule(net, decoder, normalizer, config, "balanced", args.seed)
    trainer.predict(
        module, datamodule=SampleDataModule(out, num_images, args.chunk_size, args.batch_size), return_predictions=False
    )
    if writer.npz_path is not None:
        print(f"sample-t2i: {num_images} images for {len(prompts)} prompts -> {writer.npz_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae sample-t2i")


if __name__ == "__main__":
    raise SystemExit(main())
