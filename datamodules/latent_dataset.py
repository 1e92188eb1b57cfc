"""Random-access dataset over a latent cache (the DataModule's `latents` mode), and latent statistics.

Two sampling policies reproduce the two official diffusion pipelines (docs/design.md, "Latent
normalisation"):

- `"lightningdit"`: each image has one *fixed* posterior sample for itself and one for its flip (as the
  official cache stores one sample per image), and every access picks the flipped version with p = 0.5.
- `"reg"`: no flip; a *fresh* posterior sample `mean + exp(logvar / 2) * eps` at every access.

Randomness comes from a generator seeded by (seed, epoch, index), not from the worker's global RNG, so the
data a step sees does not depend on the number of workers and a mid-epoch resume sees exactly the same
latents. When the cache stores pixels, the `image` is flipped together with its latent.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.image_mode import _EpochMixin
from datamodules.latent_shards import STATS, ShardReader, load_manifest, shard_name
from vfmvae.codec import LatentNormalizer, channel_stats

POLICIES = ("lightningdit", "reg")


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
    ):
        if policy not in POLICIES:
            raise ValueError(f"unknown latent sampling policy {policy!r}; choose one of {POLICIES}")
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
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
            self.normalizer = LatentNormalizer.load(stats_path or self.root / STATS)
            if self.normalizer.num_channels != self.latent_shape[0]:
                raise ValueError(
                    f"statistics have {self.normalizer.num_channels} channels, the cache {self.latent_shape[0]}"
                )
        shards = sorted(self.manifest["shards"], key=lambda s: s["index"])
        self._readers = [ShardReader(self.root / shard_name(s["index"])) for s in shards]
        self._keys = [s["keys"] for s in shards]
        self._offsets = [0]
        for s in shards:
            self._offsets.append(self._offsets[-1] + s["count"])

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
        if self.policy == "lightningdit":
            flip = bool(torch.rand((), generator=g) < 0.5)
            mean, logvar = self.moments(index, flip)
            return fixed_posterior_sample(mean, logvar, self.seed, index, flip), flip
        mean, logvar = self.moments(index, False)
        eps = torch.randn(mean.shape, generator=g)
        return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps, False

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


def compute_latent_stats(root: str | os.PathLike, num_samples: int = 10_000, seed: int = 0) -> LatentNormalizer:
    """Per-channel statistics over `num_samples` random images' fixed posterior samples (docs/design.md, "Latent normalisation").

    As the official protocol: samples of the original (not flipped) images, chosen at random without
    replacement, mean and unbiased std pooled over N, h, w.
    """
    data = LatentDataset(root, normalize=False, seed=seed)
    n = min(num_samples, len(data))
    chosen = torch.randperm(len(data), generator=_generator(seed, 104729))[:n].sort().values
    samples = torch.stack([fixed_posterior_sample(*data.moments(int(i)), seed, int(i), False) for i in chosen])
    mean, std = channel_stats(samples)
    return LatentNormalizer(mean, std)


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
