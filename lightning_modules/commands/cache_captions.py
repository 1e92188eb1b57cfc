"""Store captions (and frozen SigLIP text features) beside a latent cache, for text-to-image training.

    vfmvae cache-captions --cache data/latents/t2i256 --data-root /data/t2i/images [--source folder|webdataset]
        [--empty-caption skip|null|error] [--text-features --text-encoder-path weights/siglip2-large-patch16-512]

Captions are read from the caption folder (``captions.jsonl``) or WebDataset shards (``txt``/``json``) whose
image keys are those of the cache (file stems), cleaned, and written as the cache's caption sidecar
(`datamodules.captions_cache`; docs/text_to_image.md, "Data"). ``--text-features`` also stores the SigLIP2
text tower's outputs (it has no trained part); the query-token encoder's features cannot be stored. A
second run rewrites the sidecar. It runs no Trainer; it lives here because `vfmvae/` may not import the data
layer (docs/design.md, "Layers of the code").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datamodules.captions import EMPTY_CAPTION_POLICIES, CaptionFolderSource, iter_caption_shards, read_captions_jsonl
from datamodules.captions_cache import write_caption_sidecar
from datamodules.captions_datamodule import _shards
from vfmvae.commands._errors import run_cli
from vfmvae.text import TextCondition, build_text_encoder

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vfmvae cache-captions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="latent cache folder (make cache-latents)")
    ap.add_argument("--data-root", required=True, help="caption folder (with captions.jsonl) or WebDataset shards")
    ap.add_argument("--source", choices=("folder", "webdataset"), default="folder")
    ap.add_argument("--empty-caption", choices=EMPTY_CAPTION_POLICIES, default="skip")
    ap.add_argument("--text-features", action="store_true", help="also store SigLIP2 text-tower features")
    ap.add_argument("--text-encoder-path", help="SigLIP2 folder (model + tokenizer); none = the random debug tower")
    ap.add_argument("--text-encoder-preset", default="debug")
    ap.add_argument("--max-length", type=int, help="prompt tokens (default: the tower's positions, 64 for SigLIP2)")
    return ap


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.source == "folder":
        # Raw captions: the sidecar applies cleaning and the policy per latent row.
        captions = read_captions_jsonl(Path(args.data_root) / "captions.jsonl")
        CaptionFolderSource(args.data_root, "null")  # validates the folder layout
    else:
        captions = {r.key: r.caption for r in iter_caption_shards(_shards(args.data_root), "null")}
    kwargs = {}
    if args.text_features:
        encoder, tokenizer = build_text_encoder("siglip_text", args.text_encoder_path, args.text_encoder_preset)
        kwargs = dict(
            text_encoder=encoder,
            encode_prompts=TextCondition(tokenizer, args.max_length or encoder.length).encode,
            encoder_record={
                "kind": "siglip_text",
                "path": args.text_encoder_path,
                "preset": args.text_encoder_preset,
                "max_length": args.max_length or encoder.length,
            },
        )
    manifest = write_caption_sidecar(args.cache, captions, empty_caption=args.empty_caption, **kwargs)
    print(f"cache-captions: {manifest['num_kept']} of {manifest['num_latents']} latents captioned -> {args.cache}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv, "vfmvae cache-captions")


if __name__ == "__main__":
    raise SystemExit(main())
