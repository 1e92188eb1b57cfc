"""The "images" mode: decode + crop source records into ``uint8`` samples and batch them.

A mode turns the records of a source (``imagefolder.py``, ``webdataset_shards.py``) into training
samples; a later "latents" mode will read cached tokenizer latents instead, with the same DataModule.

Sample: ``{"image": uint8 (3, H, W), "label": int, "key": str}``; a record that fails to decode is
counted in the worker's :class:`BadImageTracker`, logged with its key and passed on as a *skipped*
sample (``image`` is ``None``) so that :func:`collate_images` can drop it and report its key.
Batch: ``{"image": uint8 (B, 3, H, W), "label": int64 (B,), "key": list[str], "skipped": list[str]}``
(B may be smaller than the batch size when images were skipped; the DataModule removes ``skipped``
before the batch reaches the model).

Randomness: a random crop draws from ``np.random.default_rng([seed, epoch, crc32(key)])``, so a
sample's crop depends only on (seed, epoch, key) - not on the worker, rank or batch size - and a
resumed run re-draws the same crops. The epoch is shared with worker processes through shared
memory, so it also reaches persistent workers.
"""

from __future__ import annotations

import multiprocessing
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from datamodules.crops import RANDOM_CROPS, get_crop
from datamodules.decoding import BadImageTracker, decode_rgb
from datamodules.imagefolder import ImageFolderSource, ImageRecord
from datamodules.webdataset_shards import WebDatasetSource


class ImageTransform:
    """Decode one record and apply a named crop (docs/design.md, "Crops and resizing") at ``size`` px."""

    def __init__(self, crop: str, size: int, seed: int = 0):
        self.crop_name, self.crop, self.size, self.seed = crop, get_crop(crop), int(size), int(seed)
        if self.size < 1:
            raise ValueError(f"image size must be >= 1, got {size}")

    def rng(self, key: str, epoch: int) -> np.random.Generator | None:
        if self.crop_name not in RANDOM_CROPS:
            return None
        return np.random.default_rng([self.seed, epoch, zlib.crc32(key.encode())])

    def __call__(self, record: ImageRecord, epoch: int) -> torch.Tensor:
        """Returns ``uint8 (3, size, size)``; raises if the record cannot be decoded."""
        if record.data is None:
            raise ValueError("sample has no image or no valid class label")
        arr = self.crop(decode_rgb(record.data), self.size, self.rng(record.key, epoch))
        # HWC -> CHW in numpy: a torch permute+copy of uint8 goes through intra-op threads, which is
        # ~20x slower on a busy machine (measured) and gains nothing for a 200 kB copy.
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class _EpochMixin:
    """Epoch shared with worker processes (shared memory survives the copy into workers)."""

    def _init_epoch(self) -> None:
        self._epoch = multiprocessing.get_context().RawValue("q", 0)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # Shared memory may only travel to a worker being started; any other pickling/deepcopy
        # (e.g. a spawn-based launcher copying the DataModule) carries the plain value instead.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state: dict) -> None:
        epoch = state["_epoch"]
        self.__dict__.update(state)
        if isinstance(epoch, int):
            self._init_epoch()
            self._epoch.value = epoch


def _sample(record: ImageRecord, transform: ImageTransform, epoch: int, tracker: BadImageTracker) -> dict:
    try:
        image = transform(record, epoch)
    except Exception as err:  # noqa: BLE001 - any decoder failure means "bad image", by design
        tracker.bad(record.key, repr(err))
        return {"image": None, "label": record.label, "key": record.key}
    tracker.ok()
    return {"image": image, "label": record.label, "key": record.key}


class MappedImages(_EpochMixin, Dataset):
    """Map-style images over an :class:`ImageFolderSource` (used with a resumable sampler)."""

    def __init__(self, source: ImageFolderSource, transform: ImageTransform, tracker: BadImageTracker):
        self.source, self.transform, self.tracker = source, transform, tracker
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return _sample(self.source[index], self.transform, self.epoch, self.tracker)


class StreamedImages(_EpochMixin, IterableDataset):
    """Iterable images over a :class:`WebDatasetSource`, split by rank and dataloader worker."""

    def __init__(self, source: WebDatasetSource, transform: ImageTransform, tracker: BadImageTracker):
        self.source, self.transform, self.tracker = source, transform, tracker
        self._init_epoch()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        for record in self.source.iter_records(epoch, worker, num_workers):
            yield _sample(record, self.transform, epoch, self.tracker)


def collate_images(samples: list[dict]) -> dict:
    """Stack decoded samples; skipped ones are dropped and their keys listed under ``skipped``."""
    good = [s for s in samples if s["image"] is not None]
    if good:
        # numpy stack: single-threaded and fast, unlike torch.stack of uint8 under thread contention.
        image = torch.from_numpy(np.stack([s["image"].numpy() for s in good]))
    else:
        image = torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    return {
        "image": image,
        "label": torch.tensor([s["label"] for s in good], dtype=torch.int64),
        "key": [s["key"] for s in good],
        "skipped": [s["key"] for s in samples if s["image"] is None],
    }


class EpochDataLoader(DataLoader):
    """DataLoader that tells its dataset the epoch at each ``iter()``.

    With a sampler that has an ``epoch`` (set by Lightning through ``set_epoch``) that epoch is used;
    otherwise (iterable datasets) the loader counts its own passes from ``start_epoch``.
    """

    def __init__(self, *args, start_epoch: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.next_epoch = int(start_epoch)

    def __iter__(self):
        sampler_epoch = getattr(self.sampler, "epoch", None)
        epoch = int(sampler_epoch) if sampler_epoch is not None else self.next_epoch
        self.next_epoch = epoch + 1
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return super().__iter__()
