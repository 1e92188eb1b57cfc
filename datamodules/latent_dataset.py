"""Random-access dataset over a latent cache (the DataModule's `latents` mode), and latent statistics.

Two sampling policies reproduce the two official diffusion pipelines (docs/design.md, "Latent
normalisation"):

- `"lightningdit"`: each image has one *fixed* posterior sample for itself and one for its flip (as the
  official cache stores one sample per image), and every access picks the flipped version with p = 0.5.
- `"reg"`: no flip; a *fresh* posterior sample `mean + exp(logvar / 2) * eps` at every access.

Randomness comes from a generator seeded by (seed, epoch, index), not from the worker's global RNG, so the
data a step sees does not depend on the number of workers and a mid-epoch resume sees exactly the same
latents. When the cache stores pixels, the `image` is flipped together with its latent.

What is checked (docs/trust.md, "What it trusts and what it checks"): at construction every shard's size and
tensor shapes against its header and the manifest, the statistics against the hash the manifest records
(`vfmvae.provenance_checks`), and with ``verify`` every shard's checksum and values; at every access, that the
latent is finite. A damaged cache is a one-line error naming the shard, never a silently skipped step.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.image_mode import _EpochMixin
from datamodules.latent_shards import (
    MANIFEST,
    MOMENT_KEYS,
    REDO_SHARD,
    STATS,
    CorruptCacheError,
    ShardReader,
    check_shard,
    load_manifest,
    nonfinite_rows,
    shard_name,
)
from vfmvae.codec import LatentNormalizer, channel_stats
from vfmvae.provenance_checks import check_latent_stats, warn_once

# Latent sampling policies, named after the official pipelines they reproduce: True = one fixed posterior sample
# per (image, flip) and the stored flip with p = 0.5 (LightningDiT); False = a fresh sample of the unflipped image
# at every access (REG). A table, so that no code branches on a name (docs/design.md, "Latent normalisation").
FIXED_SAMPLE_AND_FLIP = {"lightningdit": True, "reg": False}
POLICIES = tuple(FIXED_SAMPLE_AND_FLIP)


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def fixed_posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, seed: int, index: int, flip: bool) -> torch.Tensor:
    """The one posterior sample the LightningDiT policy uses for (image `index`, `flip`): deterministic in `seed`."""
    eps = torch.randn(mean.shape, generator=_generator(seed, index, int(flip), 7919), dtype=torch.float32)
    return mean.float() + torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0)) * eps


class LatentDataset(_EpochMixin, Dataset):
    """Items `{"latent": (C, h, w) float32 [normalised], "label": int, "key": str, "index": int, ["image"]}`.

    Args:
        root: cache folder written by `vfmvae cache-latents`.
        policy: `"lightningdit"` or `"reg"` (see module docstring).
        normalize: apply `LatentNormalizer` from `root/latents_stats.pt` (or `stats_path`).
        return_images: also return the stored `uint8 (3, H, W)` crop (error if the cache has none).
        expected_latent_shape: `(C, h, w)` the model expects; a different cache is refused naming both.
        expected_tokenizer_hash: the tokenizer weights hash the run expects; a cache from another tokenizer is refused.
        stats_cache: the cache whose statistics normalise these latents (default: ``root``; a held-out cache
            is normalised with the training cache's); ``stats_path`` must be the file its manifest records.
        verify: also check every shard's sha256 against the manifest and scan its values (reads the whole cache).
        manifest: the manifest as a dict instead of ``root/manifest.json`` (the cache writer, before writing it).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        policy: str = "lightningdit",
        normalize: bool = True,
        stats_path: str | os.PathLike | None = None,
        return_images: bool = False,
        seed: int = 0,
        expected_latent_shape: tuple[int, int, int] | None = None,
        expected_tokenizer_hash: str | None = None,
        stats_cache: str | os.PathLike | None = None,
        verify: bool = False,
        manifest: dict[str, Any] | None = None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown latent sampling policy {policy!r}; choose one of {POLICIES}")
        self.root = Path(root)
        self.manifest = manifest if manifest is not None else load_manifest(self.root)
        self.policy = policy
        self.seed = int(seed)
        self._init_epoch()  # shared with (persistent) dataloader workers
        self.latent_shape = tuple(self.manifest["latent_shape"])
        if expected_latent_shape is not None and tuple(expected_latent_shape) != self.latent_shape:
            raise ValueError(
                f"latent cache {self.root} holds latents of shape {self.latent_shape}, but the model expects "
                f"{tuple(expected_latent_shape)}"
            )
        cache_hash = self.manifest.get("tokenizer", {}).get("weights_sha256")
        if expected_tokenizer_hash is not None and cache_hash != expected_tokenizer_hash:
            raise ValueError(
                f"latent cache {self.root} was made by tokenizer {cache_hash}, but this run uses tokenizer "
                f"{expected_tokenizer_hash}"
            )
        if return_images and not self.manifest.get("store_images", False):
            raise ValueError(f"latent cache {self.root} stores no images (cache again with store_images=true)")
        self.return_images = return_images
        self.normalizer = None
        if normalize:
            self.normalizer = self._load_stats(stats_path, Path(stats_cache) if stats_cache is not None else self.root)
        shards = sorted(self.manifest["shards"], key=lambda s: s["index"])
        self._readers = [ShardReader(self.root / shard_name(s["index"])) for s in shards]
        self._keys = [s["keys"] for s in shards]
        self._offsets = [0]
        for s in shards:
            self._offsets.append(self._offsets[-1] + s["count"])
        self.labels = self._check_shards(shards, verify)

    def _load_stats(self, stats_path: str | os.PathLike | None, stats_cache: Path) -> LatentNormalizer:
        """The statistics, refused when they are not the ones the (statistics') cache manifest records."""
        path = Path(stats_path) if stats_path is not None else stats_cache / STATS
        normalizer = LatentNormalizer.load(path)
        if normalizer.num_channels != self.latent_shape[0]:
            raise ValueError(
                f"{path}: statistics have {normalizer.num_channels} channels, the cache {self.latent_shape[0]}"
            )
        owner = self.manifest if stats_cache == self.root else load_manifest(stats_cache)
        check_latent_stats(
            normalizer,
            (owner.get("latent_stats") or {}).get("sha256"),
            stats_source=str(path),
            expected_source=str(stats_cache / MANIFEST),
            fix=f"remove latent_stats_path to use {stats_cache / STATS}, or run cache-latents again on "
            f"{stats_cache} (finished shards are kept) to rewrite its statistics and manifest",
        )
        return normalizer

    def _check_shards(self, shards: list[dict[str, Any]], verify: bool) -> torch.Tensor:
        """Sizes and shapes of every shard (header only), with ``verify`` checksums and values; the sorted labels."""
        labels = []
        for s, reader in zip(shards, self._readers, strict=True):
            check_shard(
                reader.path,
                s["count"],
                self.latent_shape,
                bool(self.manifest.get("store_images")),
                s.get("sha256") if verify else None,
                index=s["index"],
                tokenizer_sha256=(self.manifest.get("tokenizer") or {}).get("weights_sha256"),
            )
            if verify and not s.get("sha256"):
                warn_once(
                    f"checksum:{self.root}",
                    f"{self.root / MANIFEST} records no checksum for shard {s['index']} (and maybe others): their "
                    "bytes cannot be verified, only their values; run cache-latents again to record them",
                )
            if verify:
                for name in MOMENT_KEYS:
                    if rows := nonfinite_rows(reader, name):
                        raise CorruptCacheError(
                            f"latent cache shard {reader.path}: non-finite values in '{name}' at rows {rows[:10]} "
                            f"(keys {[s['keys'][r] for r in rows[:3]]}); {REDO_SHARD}"
                        )
            labels.append(reader.tensor("label").unique())
        return torch.cat(labels).unique() if labels else torch.zeros(0, dtype=torch.long)

    def check_labels(self, num_classes: int, null_id: int | None = None) -> None:
        """Refuse a cache whose classes the network cannot take: more recorded classes than ``num_classes``,
        labels outside ``[0, num_classes)`` or equal to the network's null (unconditional) class ``null_id``."""
        if self.num_classes > num_classes:
            raise ValueError(
                f"latent cache {self.root} records {self.num_classes} classes, but the network has "
                f"num_classes={num_classes}; build the network with num_classes >= {self.num_classes} "
                "(model network_overrides) or cache only the classes it has"
            )
        problems = []
        if len(self.labels) and int(self.labels.min()) < 0:
            problems.append(f"negative labels (down to {int(self.labels.min())})")
        if len(self.labels) and int(self.labels.max()) >= num_classes:
            problems.append(f"labels up to {int(self.labels.max())}, beyond the network's num_classes={num_classes}")
        if null_id is not None and bool((self.labels == null_id).any()):
            problems.append(f"the null class (id {null_id}, the unconditional label of guidance) as a label")
        if problems:
            raise ValueError(
                f"latent cache {self.root} holds {'; '.join(problems)}: cache it again from a dataset whose class "
                f"ids are 0..{num_classes - 1}, or build the network with more classes (model network_overrides)"
            )

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes", 1000))

    def __len__(self) -> int:
        return self._offsets[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} latents")
        shard = bisect.bisect_right(self._offsets, index) - 1
        return shard, index - self._offsets[shard]

    def moments(self, index: int, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored posterior `(mean, logvar)` of image `index` (or of its flip), each `(C, h, w)` float32."""
        shard, row = self._locate(index)
        suffix = "_flip" if flip else ""
        reader = self._readers[shard]
        return reader.row("mean" + suffix, row).float(), reader.row("logvar" + suffix, row).float()

    def raw_latent(self, index: int) -> tuple[torch.Tensor, bool]:
        """Un-normalised latent `(C, h, w)` drawn per the policy, and whether it is the flipped image's."""
        g = _generator(self.seed, self.epoch, index)
        if FIXED_SAMPLE_AND_FLIP[self.policy]:
            flip = bool(torch.rand((), generator=g) < 0.5)
            mean, logvar = self.moments(index, flip)
            z = fixed_posterior_sample(mean, logvar, self.seed, index, flip)
        else:
            flip = False
            mean, logvar = self.moments(index, False)
            eps = torch.randn(mean.shape, generator=g)
            z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
        if not bool(torch.isfinite(z).all()):
            # Named here: the loss guard would otherwise skip every step this latent is in, epoch after epoch.
            shard, row = self._locate(index)
            names = "mean_flip/logvar_flip" if flip else "mean/logvar"
            raise CorruptCacheError(
                f"latent cache shard {self._readers[shard].path} row {row} (key {self._keys[shard][row]}): "
                f"non-finite values in {names}; {REDO_SHARD}"
            )
        return z, flip

    def __getitem__(self, index: int) -> dict[str, Any]:
        z, flip = self.raw_latent(index)
        if self.normalizer is not None:
            z = self.normalizer.normalize(z[None])[0]
        shard, row = self._locate(index)
        item = {
            "latent": z,
            "label": int(self._readers[shard].row("label", row)),
            "key": self._keys[shard][row],
            "index": index,
            "flipped": flip,
        }
        if self.return_images:
            image = self._readers[shard].row("image", row)
            item["image"] = image.flip(-1) if flip else image
        return item


def compute_latent_stats(
    root: str | os.PathLike, num_samples: int = 10_000, seed: int = 0, manifest: dict[str, Any] | None = None
) -> LatentNormalizer:
    """Per-channel statistics over `num_samples` random images' fixed posterior samples (docs/design.md, "Latent normalisation").

    As the official protocol: samples of the original (not flipped) images, chosen at random without
    replacement, mean and unbiased std pooled over N, h, w.
    """
    data = LatentDataset(root, normalize=False, seed=seed, manifest=manifest)
    n = min(num_samples, len(data))
    chosen = torch.randperm(len(data), generator=_generator(seed, 104729))[:n].sort().values
    samples = torch.stack([fixed_posterior_sample(*data.moments(int(i)), seed, int(i), False) for i in chosen])
    mean, std = channel_stats(samples)
    return LatentNormalizer(mean, std)


def latent_split(cfg: Any, train: bool) -> LatentDataset | None:
    """The latents-mode dataset of the ImageNet DataModule's config (`ImageNetDataConfig`) for one split, or None.

    The held-out cache (``latent_val_root``) is normalised with the training cache's statistics and must come
    from the training cache's tokenizer and have its latent shape (unless the config names them).
    """
    root = cfg.latent_root if train else cfg.latent_val_root
    if root is None:
        return None
    shape, tokenizer = cfg.expected_latent_shape, cfg.expected_tokenizer_hash
    if not train:
        reference = load_manifest(cfg.latent_root)
        shape = shape or tuple(reference["latent_shape"])
        tokenizer = tokenizer or (reference.get("tokenizer") or {}).get("weights_sha256")
    return LatentDataset(
        root,
        policy=cfg.latent_policy,
        stats_path=cfg.latent_stats_path,
        return_images=cfg.return_images,
        seed=cfg.seed,
        expected_latent_shape=shape,
        expected_tokenizer_hash=tokenizer,
        stats_cache=cfg.latent_root,
        verify=cfg.latent_verify,
    )


def find_latent_dataset(dm: Any) -> LatentDataset | None:
    """The `LatentDataset` a DataModule serves (``dm.latent_dataset`` or ``dm.dataset``), or ``None``.

    Callbacks and modules read the cache's manifest and latent statistics through it, whatever DataModule
    holds it (the ImageNet DataModule in its latents mode, the demo latents).
    """
    for name in ("latent_dataset", "dataset"):
        try:
            ds = getattr(dm, name, None)
        except AttributeError:  # ImageNetDataModule in the images mode
            continue
        if ds is not None and hasattr(ds, "manifest"):
            return ds
    return None
