"""Convert a released tokenizer (VA-VAE .pt, diffusers SD-VAE folder, VFM-VAE .pth) into an export folder.

    vfmvae export-tokenizer --tokenizer vavae-imagenet256-f16d32-dinov2.pt --tokenizer-preset vavae-f16d32 --out T
    vfmvae export-tokenizer --tokenizer sd-vae-ft-ema/ --out T

The folder (config.json + model.safetensors, with the weights hash) is what every other command and the diffusion
configs take as ``TOKENIZER=`` (`vfmvae.tokenizer.sources.load_any_tokenizer` reads it without the converter;
docs/analyses.md, "Table 1"). Prints the tokenizer's record.
"""

from __future__ import annotations

import argparse
import json

from vfmvae.commands._errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfmvae export-tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--tokenizer", required=True, help="released file or folder (or 'none' with a preset: random)")
    p.add_argument("--tokenizer-preset", help="vavae-f16d32 for a released VA-VAE file; a preset for 'none'")
    p.add_argument(
        "--tokenizer-kwargs", help="VA-VAE config YAML / official VFM-VAE generator kwargs of a release file"
    )
    p.add_argument("--vfm-path", help="local SigLIP2 folder of an official VFM-VAE release")
    p.add_argument("--out", required=True, help="export folder to write")
    return p


def run(argv: list[str] | None = None) -> dict:
    """The exported tokenizer's record."""
    args = build_parser().parse_args(argv)
    from vfmvae.tokenizer.sources import load_any_tokenizer, tokenizer_record

    model = load_any_tokenizer(
        args.tokenizer, args.tokenizer_preset, args.tokenizer_kwargs, vfm_pretrained=args.vfm_path
    )
    if args.vfm_path is None:
        model.save_pretrained(args.out)
    else:
        model.save_pretrained(args.out, vfm_pretrained=args.vfm_path)  # VFM-VAE: record the VFM by path
    record = {**tokenizer_record(model), "path": args.out}
    print(
        json.dumps({k: record[k] for k in ("kind", "weights_sha256", "latent_channels", "downsample_factor", "path")})
    )
    return record


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae export-tokenizer")
