"""Writes the images of a sampling ``predict`` run (`vfmvae sample`): PNGs per batch, the chunk record
once a chunk is complete, and (rank 0, when every chunk exists) the ADM ``.npz``
(`vfmvae.utils.sample_store`). The DataModule is read duck-typed (``chunk_size``, ``num_images``,
``num_chunks``, ``chunk_length``: `lightning_modules.sampling.SampleDataModule`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from vfmvae.utils.sample_store import chunk_finished, chunk_record_path, pack_npz, png_path, write_json_atomic

__all__ = ["SampleWriter"]


class SampleWriter(BasePredictionWriter):
    """PNGs per batch, chunk records, and the packed ``.npz`` (``npz_path`` after the run)."""

    def __init__(self, out: Path, provenance: dict[str, Any]):
        super().__init__(write_interval="batch")
        self.out, self.provenance = out, provenance
        self._pending: dict[int, list[dict[str, Any]]] = {}
        self.npz_path: Path | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        dm = trainer.datamodule
        k, start = prediction["chunk"], prediction["start"]
        for j, image in enumerate(prediction["images"]):
            Image.fromarray(np.ascontiguousarray(image)).save(png_path(self.out, start + j))
        rows = self._pending.setdefault(k, [])
        rows.append({"start": start, "labels": prediction["labels"], "seed": prediction["seed"]})
        if sum(len(r["labels"]) for r in rows) == dm.chunk_length(k):
            rows = sorted(self._pending.pop(k), key=lambda r: r["start"])
            record = {
                "chunk": k,
                "first": k * dm.chunk_size,
                "count": dm.chunk_length(k),
                "labels": [lab for r in rows for lab in r["labels"]],
                "batches": [{"start": r["start"], "seed": r["seed"]} for r in rows],
            }
            write_json_atomic(chunk_record_path(self.out, k), record)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._pending:
            raise RuntimeError(f"sampling: chunks {sorted(self._pending)} did not receive all their images")
        trainer.strategy.barrier("sampling_done")
        if trainer.is_global_zero:
            dm = trainer.datamodule
            missing = [k for k in range(dm.num_chunks) if not chunk_finished(self.out, k, dm.chunk_size, dm.num_images)]
            if missing:
                raise RuntimeError(f"sampling: chunks {missing[:10]} are unfinished after the run; run again")
            self.npz_path = pack_npz(self.out, dm.num_images, dm.num_chunks, self.provenance)
        trainer.strategy.barrier("sampling_packed")
