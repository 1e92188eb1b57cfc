"""Captions (and frozen text features) stored beside a latent cache: a sidecar that leaves the latent
cache's own files untouched (docs/text_to_image.md, "Data").

Files added to a cache folder written by `make cache-latents`:

    captions.jsonl               one line per kept latent row: {"index", "key", "caption"}
    captions_manifest.json       counts, the empty-caption policy, the skipped keys, and (with features)
                                 the text encoder's record and the feature shape
    text_features.safetensors    optional: {"features": (N_kept, L_t, D_t)} float32, in captions.jsonl order

Features are stored only for a text encoder without trained parts (SigLIP2's text tower): BLIP3-o's
query tokens train, so their features are recomputed every step (`vfmvae.text.causal_lm`).
`CaptionLatentDataset` serves the cache's latent items plus ``caption`` (and ``text_features``), over the
kept rows only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from datamodules.captions import apply_policy
from datamodules.latent_dataset import LatentDataset
from datamodules.latent_shards import load_manifest, write_json_atomic
from vfmvae.utils.checkpoint_io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["CAPTION_SIDECAR", "CAPTION_MANIFEST", "TEXT_FEATURES", "CaptionLatentDataset", "write_caption_sidecar"]

CAPTION_SIDECAR = "captions.jsonl"
CAPTION_MANIFEST = "captions_manifest.json"
TEXT_FEATURES = "text_features.safetensors"


def _cache_keys(root: Path) -> list[str]:
    manifest = load_manifest(root)
    return [k for s in sorted(manifest["shards"], key=lambda s: s["index"]) for k in s["keys"]]


def write_caption_sidecar(
    cache_root: str | os.PathLike,
    captions: Mapping[str, Any],
    *,
    empty_caption: str = "skip",
    text_encoder: torch.nn.Module | None = None,
    encode_prompts=None,
    encoder_record: Mapping[str, Any] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Write the sidecar of ``cache_root`` from ``{key: raw caption}``; returns its manifest.

    Captions are cleaned and the ``empty_caption`` policy applied per latent row (a row without an entry
    counts as empty). With ``text_encoder`` (features ``(B, L_t, D_t)`` from ids) and ``encode_prompts``
    (prompts -> ids) the encoder's outputs are stored too; an encoder with trained parts is refused.
    """
    root = Path(cache_root)
    keys = _cache_keys(root)
    counts: dict[str, int] = {}
    rows, skipped = [], []
    for index, key in enumerate(keys):
        caption = apply_policy(key, captions.get(key), empty_caption, counts)
        if caption is None:
            skipped.append(key)
        else:
            rows.append({"index": index, "key": key, "caption": caption})
    if not rows:
        raise ValueError(f"no latent of {root} has a usable caption ({len(keys)} latents, policy {empty_caption!r})")
    manifest: dict[str, Any] = {
        "num_latents": len(keys),
        "num_kept": len(rows),
        "num_empty": counts.get("empty", 0),
        "empty_caption": empty_caption,
        "skipped": skipped,
    }
    if text_encoder is not None:
        if getattr(text_encoder, "trainable_outputs", True):
            raise ValueError(
                "text features can only be stored for a text encoder without trained parts (siglip_text); "
                "the query-token encoder's features change as it trains"
            )
        feats = []
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                ids = encode_prompts([r["caption"] for r in rows[i : i + batch_size]])
                feats.append(text_encoder(ids).float().cpu())
        features = torch.cat(feats)
        with atomic_path(root / TEXT_FEATURES) as tmp:
            save_file({"features": features.contiguous()}, str(tmp))
        manifest["text_features"] = {"shape": list(features.shape[1:]), "encoder": dict(encoder_record or {})}
    with atomic_path(root / CAPTION_SIDECAR) as tmp:
        Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    write_json_atomic(root / CAPTION_MANIFEST, manifest)
    log.info("captions: %d of %d latents kept (%d empty) -> %s", len(rows), len(keys), counts.get("empty", 0), root)
    return manifest


class CaptionLatentDataset(Dataset):
    """Latent items (`LatentDataset`) of the captioned rows plus ``caption`` [and ``text_features`` (L_t, D_t)].

    ``use_text_features``: serve the stored features (an error if the sidecar has none).
    Other keyword arguments go to `LatentDataset` (policy, normalisation, stored images, seed, checks).
    """

    def __init__(self, root: str | os.PathLike, *, use_text_features: bool = False, **latent_kwargs: Any) -> None:
        self.root = Path(root)
        if not (self.root / CAPTION_SIDECAR).is_file():
            raise FileNotFoundError(
                f"latent cache {self.root} has no {CAPTION_SIDECAR}: run `vfmvae cache-captions` on it first"
            )
        self.latents = LatentDataset(self.root, **latent_kwargs)
        lines = (self.root / CAPTION_SIDECAR).read_text(encoding="utf-8").splitlines()
        self.rows = [json.loads(line) for line in lines if line.strip()]
        self.caption_manifest = json.loads((self.root / CAPTION_MANIFEST).read_text())
        if any(r["index"] >= len(self.latents) for r in self.rows):
            raise ValueError(f"{self.root}/{CAPTION_SIDECAR} names rows beyond the cache's {len(self.latents)} latents")
        self.features = None
        if use_text_features:
            if not (self.root / TEXT_FEATURES).is_file():
                raise FileNotFoundError(f"{self.root} stores no text features (cache-captions --text-features)")
            self.features = load_file(str(self.root / TEXT_FEATURES))["features"]
            if self.features.shape[0] != len(self.rows):
                raise ValueError(f"{TEXT_FEATURES} has {self.features.shape[0]} rows, captions {len(self.rows)}")

    # What `DiffusionModule` and the callbacks read from a latent dataset.
    manifest = property(lambda self: self.latents.manifest)
    normalizer = property(lambda self: self.latents.normalizer)
    latent_shape = property(lambda self: self.latents.latent_shape)
    policy = property(lambda self: self.latents.policy)

    def set_epoch(self, epoch: int) -> None:
        self.latents.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        item = self.latents[row["index"]]
        if item["key"] != row["key"]:
            raise ValueError(f"{CAPTION_SIDECAR} row {i} names key {row['key']!r}, the cache has {item['key']!r}")
        item["caption"] = row["caption"]
        if self.features is not None:
            item["text_features"] = self.features[i]
        return item
