"""The latent cache as data (docs/design.md, "Latent normalisation"): which images, which shards, the manifest.

Work is split into *shards*: shard `k` holds images `[k * shard_size, (k + 1) * shard_size)` of the source
in its fixed (sorted) order. Each rank takes the unfinished shards `k` with `k % world_size == rank`; a
finished shard (sidecar present, checksum verified) is never redone, a partial one is redone from scratch,
so a crashed or repeated run continues where it stopped. `finalize_cache` (rank 0, once every shard
exists) writes the manifest and the latent statistics.

`ShardImages` yields each image `adm_center`-cropped (docs/design.md, "Crops and resizing"); the
encoding itself is `lightning_modules.latent_cache` (a Lightning `predict` run, so it scales to many
GPUs and nodes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.crops import adm_center_crop
from datamodules.decoding import decode_rgb
from datamodules.imagefolder import ImageFolderSource
from datamodules.latent_dataset import compute_latent_stats
from datamodules.latent_shards import (
    FORMAT_VERSION,
    MANIFEST,
    STATS,
    ShardReader,
    read_record,
    shard_is_finished,
    shard_name,
    write_json_atomic,
)
from vfmvae.provenance import to_jsonable
from vfmvae.provenance_checks import latent_stats_sha256

log = logging.getLogger(__name__)


class ShardImages(Dataset):
    """The images of the given shards, in order: items `{image, label, key, index, ok, reason}`.

    A corrupt image yields `ok=False` and a zero image, so that the writer can record its key as bad
    instead of the run dying (or silently losing the key).
    """

    def __init__(self, source: ImageFolderSource, shards: list[int], shard_size: int, image_size: int):
        self.source = source
        self.image_size = image_size
        self.indices = [i for k in shards for i in range(k * shard_size, min((k + 1) * shard_size, len(source)))]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        record = self.source[index]
        try:
            crop = adm_center_crop(decode_rgb(record.data), self.image_size)
            image, ok, reason = torch.from_numpy(crop.copy()).permute(2, 0, 1).contiguous(), True, ""
        except Exception as err:  # noqa: BLE001 - any decoder failure marks the image bad
            image, ok, reason = torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), False, repr(err)
        return {"image": image, "label": record.label, "key": record.key, "index": index, "ok": ok, "reason": reason}


class LatentCacheDataModule(LightningDataModule):
    """Serves the unfinished shards of this rank (computed after the processes are launched)."""

    def __init__(
        self,
        data_root: str,
        out_dir: str,
        image_size: int = 256,
        shard_size: int = 10_000,
        batch_size: int = 64,
        num_workers: int = 4,
        keep_keys: frozenset[str] | None = None,
    ):
        super().__init__()
        self.data_root, self.out_dir = data_root, Path(out_dir)
        self.image_size, self.shard_size = image_size, shard_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.keep_keys = keep_keys
        self.source: ImageFolderSource | None = None

    @property
    def num_shards(self) -> int:
        return -(-len(self.source) // self.shard_size)

    def setup(self, stage: str | None = None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.source = ImageFolderSource(self.data_root, keep_keys=self.keep_keys)

    def shard_size_of(self, k: int) -> int:
        return min(self.shard_size, len(self.source) - k * self.shard_size)

    def pending_shards(self, rank: int, world_size: int) -> list[int]:
        return [k for k in range(rank, self.num_shards, world_size) if not shard_is_finished(self.out_dir, k)]

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        shards = self.pending_shards(rank, world)
        log.info("rank %d: %d of %d shards to do", rank, len(shards), len(range(rank, self.num_shards, world)))
        data = ShardImages(self.source, shards, self.shard_size, self.image_size)
        # The split over ranks is by shard (above). A DistributedSampler over one replica keeps Lightning from
        # splitting this rank's images a second time (it only injects its own sampler for non-distributed ones).
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=False)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            sampler=sampler,
            pin_memory=torch.cuda.is_available(),
        )


def finalize_cache(
    dm: LatentCacheDataModule, store_images: bool, stats_samples: int, seed: int, provenance: dict[str, Any]
) -> dict[str, Any]:
    """Verify every shard, write `latents_stats.pt` and `manifest.json` (with the statistics' hash; rank 0 only)."""
    records = []
    for k in range(dm.num_shards):
        if not shard_is_finished(dm.out_dir, k):
            raise RuntimeError(f"latent cache: shard {k} is missing or corrupt after the run; run again to redo it")
        records.append(read_record(dm.out_dir, k))
    first = _first_nonempty(dm.out_dir, records)
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": to_jsonable(provenance.get("tokenizer", {})),
        "source": {
            "root": str(dm.data_root),
            "num_images": len(dm.source),
            "crop": "adm_center",
            "image_size": dm.image_size,
        },
        "latent_shape": first["latent_shape"],
        "dtype": first["dtype"],
        "store_images": store_images,
        "num_classes": provenance.get("num_classes", 1000),
        "shard_size": dm.shard_size,
        "num_written": sum(r.count for r in records),
        "num_bad": sum(len(r.bad) for r in records),
        "bad": [b for r in records for b in r.bad],
        "shards": [{k: v for k, v in r.to_json().items()} for r in records],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # Statistics first, then the manifest with their hash: the manifest is what marks the cache finished, so a
    # crash in between leaves an unfinished cache (finalised again by the next run), never an unchecked pair.
    stats = compute_latent_stats(dm.out_dir, stats_samples, seed, manifest=manifest)
    stats.save(dm.out_dir / STATS)
    manifest["latent_stats"] = {"file": STATS, "sha256": latent_stats_sha256(stats)}
    write_json_atomic(dm.out_dir / MANIFEST, manifest)
    log.info(
        "latent cache: %d latents in %d shards, %d bad images -> %s",
        manifest["num_written"],
        len(records),
        manifest["num_bad"],
        dm.out_dir,
    )
    return manifest


def _first_nonempty(root: Path, records) -> dict[str, Any]:
    for r in records:
        if r.count:
            t = ShardReader(root / shard_name(r.index)).tensor("mean")
            return {"latent_shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}
    raise RuntimeError("latent cache: no image could be encoded (all shards empty)")


__all__ = ["LatentCacheDataModule", "ShardImages", "finalize_cache"]
