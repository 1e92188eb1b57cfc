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

Reading checks every shard's size and tensors against its header and the manifest (`check_shard`, cheap: the
header only) and, on request, its checksum and values; a damaged shard is a one-line `CorruptCacheError`
naming the file.
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
SHARD_METADATA = "vfmvae_shard"  # safetensors metadata entry: JSON {"index", ["tokenizer_sha256"]}
MOMENT_KEYS = ("mean", "logvar", "mean_flip", "logvar_flip")
REDO_SHARD = (
    "delete it and its .json sidecar, then run cache-latents again on the same folder (finished shards are kept)"
)


class CorruptCacheError(ValueError):
    """A shard of the latent cache is missing, truncated, altered or holds non-finite values (one line, names the file)."""


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
    # The header says which shard this is (and, from the writer, of which tokenizer): a swapped or foreign shard
    # is then caught by `check_shard` from the header alone. One JSON entry with sorted keys: safetensors writes
    # several metadata entries in no fixed order, and the shard's bytes (its checksum) must not depend on it.
    header = {SHARD_METADATA: json.dumps({"index": index, **(metadata or {})}, sort_keys=True)}
    _atomic_write_bytes(path, lambda tmp: save_file(contiguous, tmp, metadata=header))
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


def read_header(path: str | os.PathLike) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """``(data offset, tensor table, shard record)`` of a safetensors file from its header alone (no tensor is
    read); the record is what `write_shard` stored (``{}`` for shards written before it stored one)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > 100_000_000:
            raise ValueError("not a safetensors file (header length is implausible)")
        text = f.read(n)
    if len(text) < n:
        raise ValueError("the header is cut short")
    table = json.loads(text)
    metadata = table.pop("__metadata__", None) or {}
    return 8 + n, table, json.loads(metadata.get(SHARD_METADATA, "{}"))


def check_shard(
    path: str | os.PathLike,
    count: int,
    latent_shape: Sequence[int],
    store_images: bool,
    sha256: str | None = None,
    index: int | None = None,
    tokenizer_sha256: str | None = None,
) -> None:
    """Refuse a shard whose file does not hold ``count`` rows of the expected tensors, whose header names another
    shard ``index`` or tokenizer, or (given ``sha256``) whose bytes differ from that checksum: a one-line
    `CorruptCacheError` naming the file. Shards written before the header recorded index and tokenizer pass."""
    path = Path(path)
    where = f"latent cache shard {path}"
    if not path.is_file():
        raise CorruptCacheError(f"{where}: missing; {REDO_SHARD}")
    size = path.stat().st_size
    try:
        start, table, metadata = read_header(path)
        end = start + max((int(t["data_offsets"][1]) for t in table.values()), default=0)
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CorruptCacheError(f"{where}: truncated or not a safetensors file ({err}); {REDO_SHARD}") from err
    if size != end:
        what = f"truncated ({size} of {end} bytes)" if size < end else f"{size - end} bytes longer than its data"
        raise CorruptCacheError(f"{where}: {what}; {REDO_SHARD}")
    if index is not None and metadata.get("index", index) != index:
        raise CorruptCacheError(f"{where}: holds the rows of shard {metadata['index']}, not {index}; {REDO_SHARD}")
    written_by = metadata.get("tokenizer_sha256")
    if tokenizer_sha256 and written_by and written_by != tokenizer_sha256:
        raise CorruptCacheError(
            f"{where}: written by tokenizer {written_by[:12]}, the manifest's is {tokenizer_sha256[:12]} "
            f"(a shard of another cache); {REDO_SHARD}"
        )
    expected = {name: [count, *latent_shape] for name in MOMENT_KEYS} | {"label": [count]}
    for name, shape in expected.items():
        got = table.get(name, {}).get("shape")
        if got != shape:
            raise CorruptCacheError(
                f"{where}: tensor '{name}' has shape {got}, the manifest says {shape}; {REDO_SHARD}"
            )
    if store_images and (table.get("image", {}).get("shape") or [None])[0] != count:
        raise CorruptCacheError(f"{where}: no 'image' rows for its {count} keys; {REDO_SHARD}")
    if sha256 is not None and (got := sha256_file(path)) != sha256:
        raise CorruptCacheError(f"{where}: sha256 {got[:12]} differs from the manifest's {sha256[:12]}; {REDO_SHARD}")


def nonfinite_rows(reader: ShardReader, name: str) -> list[int]:
    """Rows of tensor ``name`` holding NaN or infinity (reads the whole tensor)."""
    t = reader.tensor(name)
    return torch.nonzero(~torch.isfinite(t.flatten(1)).all(dim=1)).flatten().tolist()


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"latent cache manifest not found: {path} (run `make cache-latents` first)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCacheError(
            f"{path}: not a readable manifest ({err}); run cache-latents again to rewrite it"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ValueError(f"{path}: unsupported latent cache format {version}")
    for key in ("latent_shape", "shards"):
        if key not in manifest:
            raise CorruptCacheError(f"{path}: no '{key}' entry; run cache-latents again to rewrite the manifest")
    return manifest
