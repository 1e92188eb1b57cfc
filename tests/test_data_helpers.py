"""Builders of small ImageFolder trees and WebDataset shards for the data tests (no tests here).

Shards are written with webdataset's own ``TarWriter``, so the project's tar reader is checked against
the library that defines the format, in the ``timm/imagenet-1k-wds`` layout (``jpg``, ``cls``, ``json``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

SYNSETS = ["n01440764", "n01443537", "n01484850"]  # sorted, as ImageNet's first three classes


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A textured RGB image (smooth gradient + noise) so interpolation differences show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], axis=-1)
    arr = np.clip(base + rng.normal(0, 40, size=(height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_samples(per_class: int = 4, sizes: list[tuple[int, int]] | None = None) -> list[dict]:
    """Sample specs: key (ImageNet-style ``<synset>_<n>``), synset, label, size (W, H)."""
    sizes = sizes or [(40, 30), (30, 50), (64, 64), (50, 36)]
    out = []
    for label, syn in enumerate(SYNSETS):
        for i in range(per_class):
            out.append(
                {"key": f"{syn}_{100 + i}", "synset": syn, "label": label, "size": sizes[(i + label) % len(sizes)]}
            )
    return out


def write_imagefolder(root: Path, samples: list[dict]) -> dict[str, bytes]:
    """Writes ``root/<synset>/<key>.JPEG``; returns key -> encoded bytes."""
    data = {}
    for n, s in enumerate(samples):
        (root / s["synset"]).mkdir(parents=True, exist_ok=True)
        data[s["key"]] = jpeg_bytes(noise_image(*s["size"], seed=n))
        (root / s["synset"] / f"{s['key']}.JPEG").write_bytes(data[s["key"]])
    return data


def write_shards(root: Path, samples: list[dict], num_shards: int, split: str = "train") -> list[Path]:
    """Writes ``root/imagenet1k-<split>-XXXX.tar`` with samples dealt round-robin over shards."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"imagenet1k-{split}-{i:04d}.tar" for i in range(num_shards)]
    writers = [wds.TarWriter(str(p)) for p in paths]
    for n, s in enumerate(samples):
        writers[n % num_shards].write(
            {
                "__key__": s["key"],
                "jpg": s.get("bytes") or jpeg_bytes(noise_image(*s["size"], seed=n)),
                "cls": str(s["label"]).encode(),
                "json": json.dumps({"filename": s["key"] + ".JPEG", "label": s["label"]}).encode(),
            }
        )
    for w in writers:
        w.close()
    return paths


def make_datamodule(root, **overrides):
    """An `ImageNetDataModule` over ``root`` for single-process tests: no validation split, 16 px, no workers,
    no pinning, no shuffling, no dropped last batch; ``overrides`` replace any `ImageNetDataConfig` field."""
    from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule

    cfg = dict(
        root=str(root),
        val_split=None,
        resolution=16,
        num_workers=0,
        pin_memory=False,
        shuffle_train=False,
        drop_last_train=False,
    )
    return ImageNetDataModule(ImageNetDataConfig(**{**cfg, **overrides}))
