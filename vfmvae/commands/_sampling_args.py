"""Command-line options shared by `vfmvae sample` and `vfmvae sample-t2i` (not a command: the leading
underscore keeps it out of the dispatcher). Both decode with a tokenizer checked against the latent cache's
(docs/design.md, "Checkpoints, resume and provenance") and run one of the paper's samplers."""

from __future__ import annotations

import argparse

__all__ = ["add_decoder_arguments", "add_sampler_arguments"]


def add_decoder_arguments(ap: argparse.ArgumentParser) -> None:
    """The decoding tokenizer and the latent statistics (checked by `vfmvae.provenance_checks.sampling_inputs`)."""
    ap.add_argument("--tokenizer", required=True, help="save_pretrained folder, official .pth, or 'none' (random)")
    ap.add_argument("--tokenizer-preset", default="vfmvae-f16d32-siglip2", help="preset of a random ('none') decoder")
    ap.add_argument("--tokenizer-kwargs", help="official generator kwargs (JSON/YAML) for an official .pth")
    ap.add_argument(
        "--allow-tokenizer-mismatch", action="store_true", help="decode with another tokenizer than the cache's"
    )
    ap.add_argument("--latent-stats", help="latents_stats.pt (default: the statistics recorded in the checkpoint)")


def add_sampler_arguments(ap: argparse.ArgumentParser) -> None:
    """Overrides of the network's paper sampler preset (`vfmvae.transport.sampling.sampler_config`)."""
    ap.add_argument("--sampler", help="a vfmvae.transport.SAMPLER_PRESETS key (default: the network's paper sampler)")
    ap.add_argument("--cfg-scale", type=float, help="CFG scale (1 = no CFG; default: the preset's 4.0)")
    ap.add_argument("--num-steps", type=int, help="sampler grid points (default: the preset's 250)")
