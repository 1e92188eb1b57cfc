"""Labelled latents for the linear probe (docs/analyses.md, "Linear probe"): a training and a validation cache.

Both splits are latent caches written by ``vfmvae cache-latents`` (the posterior moments of each image and of its
horizontal flip, with the class label). The probe reads the posterior **mean** (the deterministic latent; a
sample would add the tokenizer's noise to the features):

- training: the mean of the image or of its stored flip, chosen with p = 0.5 from a generator seeded by
  (seed, epoch, index), so the data do not depend on the number of processes or workers
  (``augmentation="none"``: always the image);
- validation: the mean of the image itself.

Sharding keeps a fixed global batch exact over any number of processes: the training sampler is
`ResumableDistributedSampler` with ``drop_last`` (rank r takes every world-th index of one seeded permutation, so
the r-th micro-batches of all ranks together are the single-process batch), the validation sampler gives rank r
indices ``r, r + world, ...`` without padding (no image counted twice).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import Dataset, Sampler

from datamodules.image_mode import EpochDataLoader, _EpochMixin
from datamodules.latent_dataset import LatentDataset, _generator
from datamodules.samplers import ResumableDistributedSampler

__all__ = ["ProbeLatents", "LatentProbeDataModule", "RankSlice"]


class ProbeLatents(_EpochMixin, Dataset):
    """Items ``{"latent": (C, h, w) float32 posterior mean, "label": int, "index": int}`` of one cache."""

    def __init__(self, root: str | os.PathLike, augmentation: str = "none", seed: int = 0):
        if augmentation not in ("flip", "none"):
            raise ValueError(f"unknown probe augmentation {augmentation!r}; choose 'flip' or 'none'")
        self.cache = LatentDataset(root, normalize=False, seed=seed)
        self.augmentation, self.seed = augmentation, int(seed)
        self._init_epoch()

    @property
    def manifest(self) -> dict[str, Any]:
        return self.cache.manifest

    @property
    def num_classes(self) -> int:
        return self.cache.num_classes

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        flip = False
        if self.augmentation == "flip":
            flip = bool(torch.rand((), generator=_generator(self.seed, self.epoch, index, 31)) < 0.5)
        mean, _ = self.cache.moments(index, flip)
        shard, row = self.cache._locate(index)
        return {"latent": mean, "label": int(self.cache._readers[shard].row("label", row)), "index": index}


class RankSlice(Sampler):
    """Indices ``rank, rank + world, ...`` of a dataset: every item exactly once over the ranks (no padding)."""

    def __init__(self, length: int, rank: int, world: int):
        self.length, self.rank, self.world = int(length), int(rank), int(world)

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


class LatentProbeDataModule(LightningDataModule):
    """Training and validation latents of the linear probe.

    Args:
        train_root, val_root: latent caches of the two splits (same tokenizer, same latent shape).
        augmentation: ``"flip"`` or ``"none"`` (training only); the module's protocol sets it when ``None``.
        batch_size: images per process and step; `lightning_modules.linear_probe.LinearProbeModule` sets it to
            ``global_batch_size / world`` in ``setup``.
        num_workers, seed: loader workers; seed of the permutation and of the flips.
    """

    def __init__(
        self,
        train_root: str | None = None,
        val_root: str | None = None,
        augmentation: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_root, self.val_root = train_root, val_root
        self.augmentation, self.batch_size = augmentation, int(batch_size)
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.train_set: ProbeLatents | None = None
        self.val_set: ProbeLatents | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not self.train_root or not self.val_root:
            raise ValueError(
                "the linear probe needs two latent caches: data.init_args.train_root and data.init_args.val_root "
                "(`vfmvae linear-probe --train-latents ... --val-latents ...`)"
            )
        self.train_set = ProbeLatents(self.train_root, self.augmentation or "none", self.seed)
        self.val_set = ProbeLatents(self.val_root, "none", self.seed)
        a, b = self.train_set.manifest, self.val_set.manifest
        if tuple(a["latent_shape"]) != tuple(b["latent_shape"]):
            raise ValueError(
                f"latent caches differ in shape: train {self.train_root} {tuple(a['latent_shape'])}, "
                f"val {self.val_root} {tuple(b['latent_shape'])}; cache both splits with the same tokenizer and size"
            )
        ha, hb = (m.get("tokenizer", {}).get("weights_sha256") for m in (a, b))
        if ha and hb and ha != hb:
            raise ValueError(
                f"latent caches come from different tokenizers (train {ha[:12]}, val {hb[:12]}); "
                "cache both splits with the same tokenizer"
            )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        self.setup()
        return tuple(self.train_set.manifest["latent_shape"])

    @property
    def num_classes(self) -> int:
        self.setup()
        return max(self.train_set.num_classes, self.val_set.num_classes)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> EpochDataLoader:
        rank, world = self._rank_world()
        sampler = ResumableDistributedSampler(
            self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        if sampler.num_samples < self.batch_size:
            raise ValueError(
                f"{len(self.train_set)} training latents give no full batch of {self.batch_size} per process; "
                "lower the global batch size"
            )
        return EpochDataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def val_dataloader(self) -> EpochDataLoader:
        rank, world = self._rank_world()
        return EpochDataLoader(
            self.val_set, batch_size=self.batch_size, sampler=RankSlice(len(self.val_set), rank, world),
            num_workers=self.num_workers,
        )  # fmt: skip
