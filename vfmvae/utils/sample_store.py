"""The on-disk layout of a sampling run: PNGs, per-chunk records, the ADM ``.npz`` (docs/design.md,
"Evaluation protocol"). Plain Python / NumPy; used by `vfmvae sample` through
`lightning_modules/sampling.py` and `callbacks/sample_writer.py`.

``OUT/images/{i:06d}.png`` (image i), ``OUT/chunks/chunk_{k:05d}.json`` (written atomically once chunk k's
PNGs exist: a chunk is finished when its record and all its PNGs exist), ``OUT/sampling.json`` (the
settings; a resumed run must use the same ones), and ``OUT/samples_{N}x{H}x{W}x3.npz`` (``arr_0`` uint8
NHWC in file-name order, as the official ``save_images_as_npz.py``, plus ``labels`` and the JSON
``provenance``) with a ``.json`` twin.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vfmvae.provenance import to_jsonable

log = logging.getLogger(__name__)

__all__ = [
    "RESUME_KEYS",
    "SEED_RULE",
    "batch_seed",
    "check_resume",
    "chunk_finished",
    "chunk_record_path",
    "pack_npz",
    "png_path",
    "write_json_atomic",
]

SEED_RULE = "seed of the batch starting at image i of chunk k = (base_seed * 1_000_003 + i) mod 2**63"
# Settings that must not change between a run and its resumption.
RESUME_KEYS = (
    "num_images",
    "chunk_size",
    "seed",
    "label_mode",
    "sampler",
    "network_sha256",
    "tokenizer_sha256",
    "latent_stats",
    "uint8_mode",
    "precision",
)


def batch_seed(base_seed: int, first_index: int) -> int:
    return (int(base_seed) * 1_000_003 + int(first_index)) % (2**63)


def chunk_record_path(out: Path, k: int) -> Path:
    return out / "chunks" / f"chunk_{k:05d}.json"


def png_path(out: Path, index: int) -> Path:
    return out / "images" / f"{index:06d}.png"


def chunk_finished(out: Path, k: int, chunk_size: int, num_images: int) -> bool:
    if not chunk_record_path(out, k).is_file():
        return False
    end = min((k + 1) * chunk_size, num_images)
    return all(png_path(out, i).is_file() for i in range(k * chunk_size, end))


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one temp name per process (DDP ranks)
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def check_resume(out: Path, provenance: dict[str, Any]) -> None:
    """A resumed run must use the same settings, or its chunks would mix two experiments."""
    path = out / "sampling.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in RESUME_KEYS if old.get(k) != provenance.get(k)]
        if changed:
            raise ValueError(
                f"{out} holds samples made with other settings ({', '.join(changed)}); use a new --out "
                "or the same settings to resume"
            )
    else:
        write_json_atomic(path, provenance)


def pack_npz(out: Path, num_images: int, num_chunks: int, provenance: dict[str, Any]) -> Path:
    """All PNGs in file-name order -> ``arr_0`` uint8 ``(N, H, W, 3)`` + labels + provenance (ADM layout).

    50,000 images at 256 px are 9.8 GB: the array is filled in a memory-mapped ``.npy`` on disk and
    streamed into the (uncompressed, as ``np.savez``) zip, so packing needs little RAM.
    """
    from PIL import Image

    files = sorted((out / "images").glob("*.png"))[:num_images]
    if len(files) != num_images:
        raise RuntimeError(f"expected {num_images} PNGs in {out / 'images'}, found {len(files)}")
    first = np.asarray(Image.open(files[0]).convert("RGB"))
    work = out / ".pack"
    work.mkdir(exist_ok=True)
    arr = np.lib.format.open_memmap(work / "arr_0.npy", mode="w+", dtype=np.uint8, shape=(num_images, *first.shape))
    for i, f in enumerate(files):
        arr[i] = np.asarray(Image.open(f).convert("RGB"))
    shape = list(arr.shape)
    arr.flush()
    del arr
    labels = []
    for k in range(num_chunks):
        labels += json.loads(chunk_record_path(out, k).read_text())["labels"]
    record = {**provenance, "num_images": num_images, "npz_shape": shape}
    np.save(work / "labels.npy", np.asarray(labels, dtype=np.int64))
    np.save(work / "provenance.npy", np.asarray(json.dumps(to_jsonable(record))))
    path = out / f"samples_{num_images}x{shape[1]}x{shape[2]}x3.npz"
    tmp = path.with_name(path.stem + ".tmp.npz")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in ("arr_0", "labels", "provenance"):
            zf.write(work / f"{name}.npy", arcname=f"{name}.npy")
    os.replace(tmp, path)
    shutil.rmtree(work)
    write_json_atomic(path.with_suffix(".json"), to_jsonable(record))
    log.info("wrote %s %s", path, tuple(shape))
    return path
