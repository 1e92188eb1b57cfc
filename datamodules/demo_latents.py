"""Demo latents for the CPU diffusion demo (`configs/diffusion/demo.yaml`), built on first use.

`DemoLatentDataModule.prepare_data` writes the embedded demo photographs (`datamodules/demo_data.py`)
as an ImageFolder tree, encodes them with a tokenizer into a real latent cache (the production caching
run, `lightning_modules.latent_cache.cache_latents`: the same shards, manifest and `latents_stats.pt`;
images stored for the alignment callback) and serves it through `datamodules.latent_dataset.LatentDataset`,
so the demo exercises the production latent path end to end. A second run reuses the cache.

The tokenizer is any export folder when given (`vfmvae.tokenizer.sources.load_any_tokenizer`), else
``tokenizer_preset`` (``debug``, or ``debug-vavae`` for a tiny VA-VAE) with random weights (a random encoder still maps photographs to structured latents, which is
all a loss-falls demo needs; decoded grids then show noise-like images).

Batches: ``{"latent": (B, C, h, w) float32 normalised, "label": int64, "key": list[str], "index",
"flipped", ["image": uint8 (B, 3, R, R)]}`` as the ImageNet DataModule's latents mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder
from datamodules.latent_cache import LatentCacheDataModule
from datamodules.latent_dataset import LatentDataset
from datamodules.latent_shards import MANIFEST

log = logging.getLogger(__name__)


def build_demo_latent_cache(
    root: str | Path,
    tokenizer: str | None = None,
    tokenizer_preset: str = "debug",
    num_per_class: int = 8,
    resolution: int = 64,
    seed: int = 0,
) -> Path:
    """Write (once) ``root/images`` and the latent cache ``root/latents``; returns the cache folder."""
    root = Path(root)
    out = root / "latents"
    if (out / MANIFEST).is_file():
        return out
    write_demo_imagefolder(
        root / "images", DemoDataConfig(resolution=resolution, num_per_class=num_per_class, seed=seed)
    )
    # The encoding run lives one layer up (a LightningModule + prediction writer): imported on first use.
    from lightning_modules.latent_cache import LatentShardWriter, cache_latents
    from vfmvae.tokenizer.sources import build_random_tokenizer, load_any_tokenizer, tokenizer_record

    # Any tokenizer kind (an export folder, or a random preset: VFM-VAE `debug`, VA-VAE `debug-vavae`).
    if tokenizer is None:  # drawn from the run's seed, on the global RNG the rest of the run continues from
        torch.manual_seed(seed)
        model = build_random_tokenizer(tokenizer_preset, vfm_config={"compute_dtype": "float32"}).float().eval()
    else:
        model = load_any_tokenizer(tokenizer, tokenizer_preset, vfm_config={"compute_dtype": "float32"})
    # The production caching path (Lightning predict + shard writer), on one CPU process.
    cache = LatentCacheDataModule(
        str(root / "images"), str(out), image_size=resolution, shard_size=64, batch_size=16, num_workers=0
    )
    provenance = {
        "tokenizer": {
            **tokenizer_record(model),
            "preset": tokenizer_preset,
            "path": tokenizer,
            "random_weights": tokenizer is None,
        },
        "num_classes": 1000,
    }
    writer = LatentShardWriter(store_images=True, stats_samples=10_000, seed=seed, provenance=provenance)
    cache_latents(model, cache, writer, accelerator="cpu", devices=1, enable_progress_bar=False)
    log.info("demo latent cache written to %s", out)
    return out


class DemoLatentDataModule(LightningDataModule):
    """Demo photographs -> latent cache -> `LatentDataset` batches (see the module docstring)."""

    def __init__(
        self,
        root: str = "outputs/demo/diffusion",
        tokenizer: str | None = None,
        tokenizer_preset: str = "debug",
        num_per_class: int = 8,
        resolution: int = 64,
        latent_policy: str = "lightningdit",
        return_images: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root, self.tokenizer, self.tokenizer_preset = root, tokenizer, tokenizer_preset
        self.num_per_class, self.resolution, self.seed = num_per_class, resolution, seed
        self.latent_policy, self.return_images = latent_policy, return_images
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset: LatentDataset | None = None

    def prepare_data(self) -> None:
        build_demo_latent_cache(
            self.root, self.tokenizer, self.tokenizer_preset, self.num_per_class, self.resolution, self.seed
        )

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = LatentDataset(
                Path(self.root) / "latents", policy=self.latent_policy, return_images=self.return_images, seed=self.seed
            )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.dataset.latent_shape

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def train_dataloader(self) -> DataLoader:
        if len(self.dataset) < self.batch_size:
            raise ValueError(
                f"the demo cache holds {len(self.dataset)} latents, fewer than one batch of {self.batch_size}"
            )
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=g,
            num_workers=self.num_workers,
        )


__all__ = ["DemoLatentDataModule", "build_demo_latent_cache"]
