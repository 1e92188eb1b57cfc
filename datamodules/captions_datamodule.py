"""`CaptionDataModule`: image-caption data for text-to-image training (docs/text_to_image.md, "Data").

Modes:

* ``"latents"`` (training): a latent cache with its caption sidecar (`datamodules.captions_cache`):
  batches ``{"latent": (B, C, h, w) float32 normalised, "caption": list[str], "key", "index", "flipped",
  ["text_features": (B, L_t, D_t)], ["image": uint8 (B, 3, R, R)] }``; map-style, read through the
  resumable sampler, so a run resumes mid-epoch exactly (docs/design.md, "Checkpoints, resume and
  provenance"). Run the Trainer with ``use_distributed_sampler: false``.
* ``"images"``: the raw pairs ``{"image": uint8 (B, 3, R, R), "caption": list[str], "key": list[str]}``
  of a caption folder (map-style) or of WebDataset shards (streamed; ``data_root`` a folder of ``.tar``
  files or one file), ``adm_center`` crops by default. For inspection, caching and evaluation.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from datamodules.captions import CaptionFolderSource, CaptionRecord, iter_caption_shards
from datamodules.captions_cache import CaptionLatentDataset
from datamodules.crops import get_crop
from datamodules.decoding import decode_rgb
from datamodules.image_mode import EpochDataLoader
from datamodules.samplers import ResumableDistributedSampler

__all__ = ["CaptionDataModule", "CaptionImages", "StreamedCaptionImages"]

MODES = ("latents", "images")
SOURCES = ("folder", "webdataset")


def _pair(record: CaptionRecord, crop: str, size: int) -> dict[str, Any]:
    image = get_crop(crop)(decode_rgb(record.data), size, None)
    return {
        "image": torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(),
        "caption": record.caption,
        "key": record.key,
    }


class CaptionImages(Dataset):
    """Map-style pairs of a caption folder."""

    def __init__(self, source: CaptionFolderSource, crop: str, size: int) -> None:
        self.source, self.crop, self.size = source, crop, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _pair(self.source[i], self.crop, self.size)


class StreamedCaptionImages(IterableDataset):
    """Pairs of WebDataset shards; reader ``g`` of ``G`` (ranks x workers) keeps samples ``g, g + G, ...``."""

    def __init__(self, shards: list[str], crop: str, size: int, empty_caption: str, rank: int, world: int) -> None:
        self.shards, self.crop, self.size, self.empty_caption = shards, crop, size, empty_caption
        self.rank, self.world = rank, world

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        readers, reader = self.world * workers, self.rank * workers + worker
        for i, record in enumerate(iter_caption_shards(self.shards, self.empty_caption)):
            if i % readers == reader:
                yield _pair(record, self.crop, self.size)


def _shards(root: str) -> list[str]:
    if os.path.isfile(root) and root.endswith(".tar"):
        return [root]
    shards = sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.tar"), recursive=True))
    if not shards:
        raise FileNotFoundError(f"no WebDataset .tar shards under {root} (data_root)")
    return shards


class CaptionDataModule(LightningDataModule):
    """See the module docstring. ``batch_size`` is per device (`DiffusionModule` sets it from its global batch).

    Args:
        mode: ``"latents"`` or ``"images"``. latent_root: the cache (latents mode).
        latent_policy / return_images / use_text_features: see `CaptionLatentDataset` / `LatentDataset`.
        source / data_root / crop / image_size / empty_caption: the images mode.
    """

    def __init__(
        self,
        mode: str = "latents",
        latent_root: str | None = None,
        latent_policy: str = "lightningdit",
        return_images: bool = False,
        use_text_features: bool = False,
        source: str = "folder",
        data_root: str | None = None,
        crop: str = "adm_center",
        image_size: int = 256,
        empty_caption: str = "skip",
        batch_size: int = 32,
        num_workers: int = 4,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES or source not in SOURCES:
            raise ValueError(f"CaptionDataModule: mode must be one of {MODES}, source one of {SOURCES}")
        root = latent_root if mode == "latents" else data_root
        if root is None:
            raise ValueError(
                f"CaptionDataModule in {mode!r} mode needs {'latent_root' if mode == 'latents' else 'data_root'}"
            )
        self.mode, self.latent_root, self.latent_policy = mode, latent_root, latent_policy
        self.return_images, self.use_text_features = return_images, use_text_features
        self.source, self.data_root, self.crop, self.image_size = source, data_root, crop, image_size
        self.empty_caption, self.batch_size, self.num_workers = empty_caption, batch_size, num_workers
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.dataset: Dataset | None = None
        self.sampler: ResumableDistributedSampler | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        rank, world = self._rank_world()
        if self.mode == "latents":
            self.dataset = CaptionLatentDataset(
                self.latent_root,
                use_text_features=self.use_text_features,
                policy=self.latent_policy,
                return_images=self.return_images,
                seed=self.seed,
            )
        elif self.source == "folder":
            self.dataset = CaptionImages(
                CaptionFolderSource(self.data_root, self.empty_caption), self.crop, self.image_size
            )
        else:
            self.dataset = StreamedCaptionImages(
                _shards(self.data_root), self.crop, self.image_size, self.empty_caption, rank, world
            )
            return
        self.sampler = ResumableDistributedSampler(
            self.dataset, num_replicas=world, rank=rank, shuffle=self.shuffle, seed=self.seed, drop_last=self.drop_last
        )

    # What `DiffusionModule` and the callbacks read.
    @property
    def latent_dataset(self) -> CaptionLatentDataset | None:
        return self.dataset if isinstance(self.dataset, CaptionLatentDataset) else None

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        return None if self.latent_dataset is None else self.latent_dataset.latent_shape

    @property
    def train_sampler(self) -> ResumableDistributedSampler | None:
        return self.sampler

    def train_dataloader(self) -> EpochDataLoader:
        self.setup("fit")
        if self.sampler is not None and len(self.dataset) < self.batch_size * self.sampler.num_replicas:
            raise ValueError(f"{len(self.dataset)} captioned samples are fewer than one batch of {self.batch_size}")
        return EpochDataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=default_collate,
            drop_last=self.drop_last and self.sampler is not None,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def predict_dataloader(self) -> EpochDataLoader:
        return self.train_dataloader()
