"""Latent caching as a Lightning `predict` run (docs/design.md, "Latent normalisation"), so it scales to many GPUs and nodes.

The images and shards come from `datamodules.latent_cache.LatentCacheDataModule`; here the tokenizer
encodes each image and its horizontal flip (`LatentCacheModule`) and `LatentShardWriter` writes each shard
the moment its last image arrives, then rank 0 finalises the cache. The posterior moments of both are
stored (not a sample: the sampling policy is the DataModule's choice). `cache_latents` runs the whole
thing (`vfmvae cache-latents`, the demo latents).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.latent_cache import LatentCacheDataModule, finalize_cache
from datamodules.latent_shards import MOMENT_KEYS, write_shard
from vfmvae.codec import uint8_to_unit

log = logging.getLogger(__name__)


class LatentCacheModule(LightningModule):
    """Encodes each image and its flip; returns the posterior moments on the CPU."""

    def __init__(self, tokenizer: torch.nn.Module, moments_dtype: str = "float32"):
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.moments_dtype = getattr(torch, moments_dtype)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        images = batch["image"]
        both = torch.cat([images, images.flip(-1)])
        # fp32 like the official prefetch scripts (autocast off): the moments are the cache's ground truth.
        with torch.autocast(device_type=self.device.type, enabled=False):
            posterior = self.tokenizer.encode(uint8_to_unit(both))
        n = images.shape[0]
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        out = {
            name: t.to("cpu", self.moments_dtype)
            for name, t in (
                ("mean", mean[:n]),
                ("logvar", logvar[:n]),
                ("mean_flip", mean[n:]),
                ("logvar_flip", logvar[n:]),
            )
        }
        out.update(
            image=images.cpu(),
            label=batch["label"].cpu(),
            key=list(batch["key"]),
            index=batch["index"].cpu(),
            ok=batch["ok"].cpu(),
            reason=list(batch["reason"]),
        )
        return out


class LatentShardWriter(BasePredictionWriter):
    """Collects predictions per shard and writes each shard the moment its last image arrives."""

    def __init__(
        self,
        store_images: bool = False,
        stats_samples: int = 10_000,
        seed: int = 0,
        provenance: dict[str, Any] | None = None,
    ):
        super().__init__(write_interval="batch")
        self.store_images = store_images
        self.stats_samples, self.seed = stats_samples, seed
        self.provenance = provenance or {}
        self._buffers: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._seen: dict[int, int] = defaultdict(int)
        self._t0 = time.time()
        self.images_done = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        dm: LatentCacheDataModule = trainer.datamodule
        for row, index in enumerate(prediction["index"].tolist()):
            k = index // dm.shard_size
            self._buffers[k].append({name: prediction[name][row] for name in prediction})
            self._seen[k] += 1
            if self._seen[k] == dm.shard_size_of(k):
                self._flush(dm, k)
        self.images_done += len(prediction["index"])
        self._show_speed(trainer)

    def _show_speed(self, trainer) -> None:
        # `self.log` is not available in predict; put images/s on the tqdm bar instead.
        rate = self.images_done / max(time.time() - self._t0, 1e-6)
        bar = getattr(trainer.progress_bar_callback, "predict_progress_bar", None)
        if bar is not None:
            bar.set_postfix({"img/s": f"{rate:.1f}"}, refresh=False)

    def _flush(self, dm: LatentCacheDataModule, k: int) -> None:
        rows = sorted(self._buffers.pop(k), key=lambda r: int(r["index"]))
        for r in rows:
            # Non-finite moments would poison the statistics and every step that draws them; caching again would
            # write them again, so such an image is skipped and named like an unreadable one.
            if bool(r["ok"]) and not all(bool(torch.isfinite(r[name]).all()) for name in MOMENT_KEYS):
                r["ok"], r["reason"] = False, "the tokenizer gave non-finite posterior moments (NaN or inf)"
        good = [r for r in rows if bool(r["ok"])]
        bad = [{"key": r["key"], "reason": r["reason"]} for r in rows if not bool(r["ok"])]
        for b in bad:
            log.warning("latent cache: skipped image %s (%s)", b["key"], b["reason"])
        names = [*MOMENT_KEYS] + (["image"] if self.store_images else [])
        tensors = {name: _stack([r[name] for r in good], rows[0][name]) for name in names}
        tensors["label"] = torch.tensor([int(r["label"]) for r in good], dtype=torch.int64)
        tokenizer = (self.provenance.get("tokenizer") or {}).get("weights_sha256")
        metadata = {"tokenizer_sha256": str(tokenizer)} if tokenizer else None
        write_shard(dm.out_dir, k, tensors, [r["key"] for r in good], bad, metadata)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._buffers:
            raise RuntimeError(f"latent cache: shards {sorted(self._buffers)} did not receive all their images")
        trainer.strategy.barrier("latent_cache_done")
        if trainer.is_global_zero:
            finalize_cache(trainer.datamodule, self.store_images, self.stats_samples, self.seed, self.provenance)
        trainer.strategy.barrier("latent_cache_manifest")


def _stack(values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(values) if values else like.new_empty((0, *like.shape))


def cache_latents(
    tokenizer: torch.nn.Module,
    data: LatentCacheDataModule,
    writer: LatentShardWriter,
    moments_dtype: str = "float32",
    **trainer_kwargs: Any,
) -> None:
    """Encode every unfinished shard of ``data`` with ``tokenizer`` (fp32) and write the cache with ``writer``.

    ``trainer_kwargs`` go to the `Trainer` (``accelerator``, ``devices``, ``num_nodes``, ...); it runs
    without a logger, in ``32-true`` precision (the moments are the cache's ground truth).
    """
    trainer = Trainer(
        logger=False, callbacks=[writer], precision="32-true", enable_model_summary=False, **trainer_kwargs
    )
    trainer.predict(LatentCacheModule(tokenizer, moments_dtype), datamodule=data, return_predictions=False)


def cache_image_folder(
    tokenizer: torch.nn.Module,
    data_root: str,
    out_dir: str,
    image_size: int = 256,
    batch_size: int = 64,
    store_images: bool = False,
    provenance: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Cache an ImageFolder split with ``tokenizer`` (any kind: `vfmvae.tokenizer.interface.Tokenizer`) into
    ``out_dir``, recording its provenance (`vfmvae.tokenizer.sources.tokenizer_record`); a finished cache is kept.
    Returns the manifest."""
    from datamodules.latent_shards import load_manifest
    from vfmvae.tokenizer.sources import tokenizer_record

    dm = LatentCacheDataModule(data_root, out_dir, image_size=image_size, batch_size=batch_size, num_workers=0)
    dm.setup()
    record = {"tokenizer": {**tokenizer_record(tokenizer), **(provenance or {})}, "num_classes": len(dm.source.classes)}
    writer = LatentShardWriter(store_images=store_images, provenance=record)
    trainer_kwargs.setdefault("enable_progress_bar", False)
    cache_latents(tokenizer, dm, writer, **trainer_kwargs)
    return load_manifest(out_dir)


__all__ = ["LatentCacheModule", "LatentShardWriter", "cache_latents", "cache_image_folder"]
