"""The Lightning ``predict`` run behind `vfmvae sample`: chunks of images sampled, decoded and written
(docs/design.md, "Evaluation protocol").

* :class:`SampleDataModule` hands rank r the unfinished chunks k with k % world == r, as batch
  descriptors ``(chunk, first image index, count)``; a chunk is finished when its record exists
  (`vfmvae.utils.sample_store.chunk_finished`), so a second run redoes nothing that is finished.
* :class:`SampleModule` samples one batch with the network's paper sampler through
  `vfmvae.transport.sample_latents` (the same path as the training sample grids), decodes it in fp32 and
  converts it to uint8 with the run's ``uint8_mode`` (``"truncate"``: the official `tools/decode`
  ``to_pil_image`` rule, the paper protocol; ``"round"``: our earlier rounding). Seeds: the batch
  starting at image i uses `vfmvae.utils.sample_store.batch_seed`, so every rank draws its own noise and
  the images do not depend on the number of processes. Conditions come from ``net.condition.draw``.
* The writer is `callbacks.sample_writer.SampleWriter`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, Dataset

from vfmvae.codec import UINT8_MODES, to_uint8
from vfmvae.transport.sampling import sample_latents
from vfmvae.utils.sample_store import batch_seed, chunk_finished

__all__ = ["ChunkBatches", "SampleDataModule", "SampleModule"]

log = logging.getLogger("sample")


class ChunkBatches(Dataset):
    """Batch descriptors ``(chunk, first index, count)`` of the given chunks (each item is one batch)."""

    def __init__(self, chunks: list[int], chunk_size: int, batch_size: int, num_images: int):
        self.items = []
        for k in chunks:
            end = min((k + 1) * chunk_size, num_images)
            for start in range(k * chunk_size, end, batch_size):
                self.items.append((k, start, min(batch_size, end - start)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return self.items[i]


class SampleDataModule(LightningDataModule):
    def __init__(self, out: Path, num_images: int, chunk_size: int, batch_size: int):
        super().__init__()
        self.out, self.num_images, self.chunk_size, self.batch_size = out, num_images, chunk_size, batch_size

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk_size)

    def chunk_length(self, k: int) -> int:
        return min(self.chunk_size, self.num_images - k * self.chunk_size)

    def pending_chunks(self, rank: int, world: int) -> list[int]:
        return [
            k
            for k in range(rank, self.num_chunks, world)
            if not chunk_finished(self.out, k, self.chunk_size, self.num_images)
        ]

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        chunks = self.pending_chunks(rank, world)
        log.info(
            "rank %d: %d chunks to sample (%d finished chunks kept)",
            rank,
            len(chunks),
            len(range(rank, self.num_chunks, world)) - len(chunks),
        )
        data = ChunkBatches(chunks, self.chunk_size, self.batch_size, self.num_images)
        return DataLoader(data, batch_size=None, shuffle=False)


class SampleModule(LightningModule):
    """Network + decoder + statistics; ``predict_step((k, start, n))`` -> uint8 NHWC images and their conditions."""

    def __init__(
        self, net, decoder, normalizer, config, label_mode: str, seed: int, uint8_mode: str = "truncate"
    ) -> None:
        super().__init__()
        if uint8_mode not in UINT8_MODES:
            raise ValueError(f"unknown uint8 mode {uint8_mode!r}; choose one of {UINT8_MODES}")
        self.net, self.decoder, self.normalizer = net, decoder, normalizer
        self.config, self.label_mode, self.seed, self.uint8_mode = config, label_mode, seed, uint8_mode

    def predict_step(self, batch, batch_idx: int) -> dict[str, Any]:
        k, start, n = (int(v) for v in batch)
        seed = batch_seed(self.seed, start)
        g = torch.Generator(device=self.device).manual_seed(seed)
        conditions = self.net.condition.draw(
            self.label_mode, n, offset=start, generator=torch.Generator().manual_seed(seed)
        ).to(self.device)
        latents = sample_latents(self.net, self.config, conditions, generator=g)
        # Decode in fp32 whatever the sampling precision (docs/design.md, "Precision policy").
        with torch.autocast(device_type=self.device.type, enabled=False):
            images = to_uint8(self.decoder.decode(self.normalizer.denormalize(latents.float())), self.uint8_mode)
        return {
            "chunk": k,
            "start": start,
            "images": images.permute(0, 2, 3, 1).cpu().numpy(),
            "labels": conditions.cpu().tolist(),
            "seed": seed,
        }
