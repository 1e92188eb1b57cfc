"""On-disk format of the latent cache: safetensors shards, per-shard sidecars and a manifest.

Layout of a cache folder (our format; docs/design.md, "Latent normalisation"):

    manifest.json                 tokenizer provenance, latent shape, dtype, counts, per-shard checksums
    latents_stats.pt              per-channel mean/std (official format, see `vfmvae.codec.LatentNormalizer`)
    shard-00000.safetensors       tensors of up to `shard_size` images (below)
    shard-00000.json              sidecar: sha256, count, keys, bad images of that shard

A shard stores, for `n` images of one fixed index range of the source dataset:
`mean`, `logvar` `(n, C, h, w)` (posterior moments of the image), `mean_flip`, `logvar_flip` (of its
horizontal flip), `label` `(n,)` int64 and optionally `image` `(n, 3, H, W)` uint8 (the `adm_center` crop; REG
computes its DINOv2 targets from pixels). Each shard is written under a temporary name and renamed, then its
sidecar likewise; a shard counts as finished only when its sidecar exists and the checksum matches, so a
crashed run redoes exactly the partial shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vfmvae.provenance import file_sha256
from vfmvae.utils.checkpoint_io import atomic_path

MANIFEST = "manifest.json"
STATS = "latents_stats.pt"
FORMAT_VERSION = 1
MOMENT_KEYS = ("mean", "logvar", "mean_flip", "logvar_flip")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def sidecar_name(index: int) -> str:
    return f"shard-{index:05d}.json"


sha256_file = file_sha256  # the cache's name for it


def _atomic_write_bytes(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temporary file in the same folder, then rename over `path`."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    _atomic_write_bytes(Path(path), _write)


@dataclass
class ShardRecord:
    """Sidecar of one finished shard."""

    index: int
    count: int
    sha256: str
    keys: list[str]
    bad: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": shard_name(self.index),
            "count": self.count,
            "sha256": self.sha256,
            "keys": self.keys,
            "bad": self.bad,
        }


def write_shard(
    root: str | os.PathLike,
    index: int,
    tensors: dict[str, torch.Tensor],
    keys: Sequence[str],
    bad: Sequence[dict[str, str]] = (),
    metadata: dict[str, str] | None = None,
) -> ShardRecord:
    """Write shard `index` atomically (tensors, then sidecar) and return its record.

    `tensors` must hold the four moment arrays and `label` with matching first dimension `len(keys)`.
    """
    root = Path(root)
    n = len(keys)
    for name in (*MOMENT_KEYS, "label"):
        if name not in tensors:
            raise KeyError(f"shard {index}: missing tensor '{name}'")
        if tensors[name].shape[0] != n:
            raise ValueError(f"shard {index}: tensor '{name}' has {tensors[name].shape[0]} rows for {n} keys")
    path = root / shard_name(index)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_write_bytes(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata or {}))
    record = ShardRecord(index=index, count=n, sha256=sha256_file(path), keys=list(keys), bad=list(bad))
    write_json_atomic(root / sidecar_name(index), record.to_json())
    return record


def read_record(root: str | os.PathLike, index: int) -> ShardRecord | None:
    """The sidecar of shard `index`, or None when the shard is not finished."""
    side = Path(root) / sidecar_name(index)
    if not side.is_file():
        return None
    d = json.loads(side.read_text())
    return ShardRecord(index=d["index"], count=d["count"], sha256=d["sha256"], keys=d["keys"], bad=d.get("bad", []))


def shard_is_finished(root: str | os.PathLike, index: int, verify: bool = True) -> bool:
    """True when shard `index` has a sidecar and (with `verify`) its file's checksum matches it."""
    record = read_record(root, index)
    path = Path(root) / shard_name(index)
    if record is None or not path.is_file():
        return False
    return not verify or sha256_file(path) == record.sha256


class ShardReader:
    """Random access to the rows of one shard through safetensors' memory-mapped slices."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._handle = None

    def _open(self):
        # Opened lazily so that each dataloader worker gets its own memory map.
        if self._handle is None:
            self._handle = safe_open(self.path, framework="pt")
        return self._handle

    def keys(self) -> list[str]:
        return list(self._open().keys())

    def row(self, name: str, i: int) -> torch.Tensor:
        return self._open().get_slice(name)[i : i + 1][0]

    def tensor(self, name: str) -> torch.Tensor:
        return self._open().get_tensor(name)

    def __getstate__(self):
        return {"path": self.path, "_handle": None}


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"latent cache manifest not found: {path} (run `make cache-latents` first)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported latent cache format {manifest.get('format_version')}")
    return manifest
