"""WebDataset source: tar shards in the ``timm/imagenet-1k-wds`` layout, streamed as records.

Layout (as published by timm and read by the official ``training/data_wds.py``): shards named
``imagenet1k-train-0000.tar ... imagenet1k-validation-63.tar``; each sample is a group of tar members
sharing a ``__key__`` (member name up to the first dot), with ``<key>.jpg`` (the JPEG bytes) and
``<key>.cls`` (the class id as ASCII digits, sorted-synset order); other members (``.json``) are ignored.

Partitioning across DDP ranks and dataloader workers gives every sample to exactly one reader:
with ``G = world_size * num_workers`` readers and reader ``g = rank * num_workers + worker``,
- ``num_shards >= G``: reader ``g`` reads shards ``g, g + G, ...`` (no wasted I/O; the usual case);
- ``world_size <= num_shards < G``: ranks split shards, the workers of a rank split the samples;
- ``num_shards < world_size``: every reader reads all shards and keeps samples ``g, g + G, ...``.
The shard order is permuted identically on every rank (from ``seed`` and the epoch) before splitting,
so the split remains a partition. Shards are read with ``tarfile`` directly (no webdataset pipeline)
so a truncated shard can be logged by name and skipped without losing the reader.
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datamodules.imagefolder import ImageRecord

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
LABEL_FIELD = "cls"


def list_shards(root: str | Path, split: str, pattern: str = "*-{split}-*.tar") -> list[str]:
    """Sorted shard paths of ``split`` under ``root`` (recursive glob of ``pattern``).

    ``root`` may also be a single ``.tar`` file. Errors name the path and the pattern searched.
    """
    root = Path(root)
    if root.is_file() and root.suffix == ".tar":
        return [str(root)]
    if not root.exists():
        raise FileNotFoundError(f"WebDataset root does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"WebDataset root is neither a directory nor a .tar file: {root}")
    glob_pattern = pattern.format(split=split)
    shards = sorted(glob.glob(os.path.join(glob.escape(str(root)), "**", glob_pattern), recursive=True))
    if not shards:
        raise FileNotFoundError(f"no WebDataset shards matching {glob_pattern!r} under {root} (split {split!r})")
    return shards


def iter_tar_samples(path: str) -> Iterator[dict]:
    """Group consecutive tar members by key: yields ``{"__key__": key, "<ext>": bytes, ...}``.

    As webdataset does, the key is the member path up to the first dot of its file name and the
    extension is the rest, lower-cased.
    """
    current: dict | None = None
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            dirname, fname = os.path.split(member.name)
            if fname.startswith("."):
                continue
            stem, _, ext = fname.partition(".")
            key = os.path.join(dirname, stem) if dirname else stem
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": path}
            data = tar.extractfile(member).read()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {member.name} truncated ({len(data)} of {member.size} bytes)")
            current[ext.lower()] = data
        end_of_members = tar.offset
    if current is not None:
        yield current
    # tarfile ends silently when a shard is cut inside a member header; a complete archive has at
    # least two zero blocks after its last member, so a shorter file was truncated.
    if os.path.getsize(path) < end_of_members + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"no end-of-archive marker after byte {end_of_members}: truncated shard")


def partition_plan(
    num_shards: int, rank: int, world_size: int, worker: int, num_workers: int
) -> tuple[slice, int, int]:
    """Return ``(shard_slice, sample_stride, sample_offset)`` for one reader (see module doc)."""
    readers = world_size * num_workers
    reader = rank * num_workers + worker
    if num_shards >= readers:
        return slice(reader, None, readers), 1, 0
    if num_shards >= world_size:
        return slice(rank, None, world_size), num_workers, worker
    return slice(None), readers, reader


def _record(sample: dict) -> ImageRecord:
    """Turn a raw tar sample into a record; a sample without image or label gets ``data=None``."""
    key = sample["__key__"]
    data = next((sample[f] for f in IMAGE_FIELDS if f in sample), None)
    try:
        label = int(sample[LABEL_FIELD].decode().strip())
    except (KeyError, ValueError, UnicodeDecodeError):
        label, data = -1, None
    return ImageRecord(key=key, label=label, data=data)


class WebDatasetSource:
    """Iterable of :class:`ImageRecord` (``data`` = encoded image bytes) for this rank and worker.

    Args:
        shards: shard paths (see :func:`list_shards`).
        keep_keys: optional key filter, applied before decoding.
        shuffle: permute shard order per epoch and shuffle samples through a buffer.
        shuffle_buffer: samples held for shuffling (per reader).
        seed: base seed (same on all ranks).
        infinite: cycle over this reader's partition forever, reshuffling each pass (training);
            otherwise one pass (evaluation, filter lists).
        rank / world_size: default to the initialised process group, else 0 / 1.
    """

    def __init__(
        self,
        shards: list[str],
        keep_keys: frozenset[str] | None = None,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        infinite: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if not shards:
            raise ValueError("WebDatasetSource needs at least one shard")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        import torch.distributed as dist  # here, so that header-only tools need not import torch

        initialised = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.world_size - 1}]")
        self.shards, self.keep_keys = list(shards), keep_keys
        self.shuffle, self.shuffle_buffer, self.seed, self.infinite = shuffle, shuffle_buffer, seed, infinite
        self.num_bad_shards = 0

    def _reader_shards(self, epoch: int, worker: int, num_workers: int) -> tuple[list[str], int, int]:
        shards = list(self.shards)
        if self.shuffle:
            # Same permutation on every rank and worker (seeded by seed and epoch only).
            order = np.random.default_rng([self.seed, epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        shard_slice, stride, offset = partition_plan(len(shards), self.rank, self.world_size, worker, num_workers)
        return shards[shard_slice], stride, offset

    def _read(self, shards: list[str], stride: int, offset: int, counts: dict[str, int]) -> Iterator[ImageRecord]:
        """This reader's records of ``shards``; ``counts`` gets raw samples, own samples and bad shards."""
        index = 0
        for shard in shards:
            try:
                for sample in iter_tar_samples(shard):
                    mine = index % stride == offset
                    index += 1
                    counts["raw"] += 1
                    counts["mine"] += mine
                    if mine and (self.keep_keys is None or sample["__key__"] in self.keep_keys):
                        yield _record(sample)
            except (tarfile.TarError, OSError, EOFError) as err:
                # A truncated/corrupt shard: the samples read before the damage were delivered.
                self.num_bad_shards += 1
                counts["bad_shards"] += 1
                log.warning("skipping rest of unreadable shard %s (%s)", shard, err)

    def _check_pass(self, shards: list[str], counts: dict[str, int], delivered: int) -> None:
        """An empty pass is an error when it is not explained by a tiny dataset or damaged shards."""
        if delivered or not shards or counts["bad_shards"]:
            return
        if counts["raw"] == 0:
            raise ValueError(f"WebDataset shards hold no samples: {shards[:5]} ({len(shards)} shards)")
        if counts["mine"] and self.keep_keys is not None:
            raise ValueError(
                f"the key filter removed all {counts['mine']} samples this reader got from {shards[:5]} "
                f"({len(shards)} shards): wrong key list for this split?"
            )

    def _shuffled(self, records: Iterator[ImageRecord], rng: np.random.Generator) -> Iterator[ImageRecord]:
        buffer: list[ImageRecord] = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], record = record, buffer[i]
            yield record
        rng.shuffle(buffer)
        yield from buffer

    def iter_records(self, epoch: int = 0, worker: int = 0, num_workers: int = 1) -> Iterator[ImageRecord]:
        """Records of reader ``(rank, worker)`` for ``epoch``; cycles when ``infinite``."""
        reader = self.rank * num_workers + worker
        pass_index = 0
        while True:
            shards, stride, offset = self._reader_shards(epoch + pass_index, worker, num_workers)
            counts = {"raw": 0, "mine": 0, "bad_shards": 0}
            records = self._read(shards, stride, offset, counts)
            if self.shuffle:
                records = self._shuffled(records, np.random.default_rng([self.seed, epoch + pass_index, reader]))
            delivered = 0
            for record in records:
                delivered += 1
                yield record
            self._check_pass(shards, counts, delivered)
            pass_index += 1
            if not self.infinite or delivered == 0:  # an empty partition must not spin forever
                return
