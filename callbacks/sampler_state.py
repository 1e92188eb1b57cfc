"""Store the position of :class:`datamodules.samplers.ResumableDistributedSampler` in checkpoints.

Why a callback is needed (checked against lightning 2.6.6, ``loops/training_epoch_loop.py`` and
``loops/fit_loop.py``): on a mid-epoch resume Lightning restores its batch counters but, for a
DataLoader without ``state_dict``, it simply starts a *fresh* iterator over the epoch and stops
once the restored count plus the new batches reaches ``len(dataloader)``. It skips nothing, so
without help the resumed run re-trains the first ``N - k`` batches of the epoch instead of the
last ``N - k``. The iterator is created in ``FitLoop.setup_data``, *before* any callback hook
of the resumed run and before ``set_epoch``; with worker processes it pulls indices from the
sampler right away, so loading the sampler state later is not enough on its own.

What this callback does:
- counts trained batches of the current epoch in ``on_train_batch_end`` and saves
  ``{epoch, position = start + batches * batch_size}`` (samples consumed per rank);
- on resume, loads that into the sampler in ``on_train_start`` (after Lightning restored the
  loops, so ``trainer.current_epoch`` is known), then re-creates the train-data iterator so the
  remaining order is used. Lightning expects ``N - k`` more batches and the sampler now yields
  exactly ``N - k`` batches (same ceil/floor arithmetic), so its epoch bookkeeping stays right.

Re-creating the iterator touches ``trainer.fit_loop._data_fetcher`` (private); the resume
test in ``tests/test_sampler_resume_lightning.py`` pins that behaviour.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from datamodules.samplers import ResumableDistributedSampler

__all__ = ["SamplerStateCallback", "find_resumable_sampler"]


def find_resumable_sampler(loaders: Any) -> tuple[ResumableDistributedSampler, DataLoader]:
    """The single ResumableDistributedSampler (and its DataLoader) in ``trainer.train_dataloader``."""
    found: list[tuple[ResumableDistributedSampler, DataLoader]] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, DataLoader):
            for s in (obj.sampler, getattr(obj.batch_sampler, "sampler", None)):
                if isinstance(s, ResumableDistributedSampler):
                    found.append((s, obj))
                    return
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    visit(loaders)
    if len(found) != 1:
        raise RuntimeError(
            f"SamplerStateCallback needs exactly one train DataLoader with a ResumableDistributedSampler, "
            f"found {len(found)}"
        )
    return found[0]


class SamplerStateCallback(Callback):
    """Checkpoint the train sampler's epoch and position so mid-epoch resume is exact."""

    def __init__(self) -> None:
        self._start_position = 0  # sampler position at the start of this (possibly resumed) epoch
        self._batches = 0  # batches trained since then
        self._pending: dict[str, Any] | None = None
        self._sampler: ResumableDistributedSampler | None = None
        self._batch_size = 1

    def _attach(self, trainer: Trainer) -> ResumableDistributedSampler:
        sampler, loader = find_resumable_sampler(trainer.train_dataloader)
        if loader.batch_size is None:
            raise RuntimeError("SamplerStateCallback needs a DataLoader with batch_size (no custom batch_sampler)")
        self._sampler, self._batch_size = sampler, int(loader.batch_size)
        return sampler

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sampler = self._attach(trainer)
        if self._pending is None:
            self._start_position, self._batches = sampler.position, 0
            return
        sampler.load_state_dict(self._pending)
        self._pending = None
        # Lightning calls set_epoch(current_epoch) only after this hook; a checkpoint taken at the
        # very end of an epoch therefore moves on to a fresh epoch here already.
        sampler.set_epoch(trainer.current_epoch)
        self._start_position, self._batches = sampler.position, 0
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is None:
            raise RuntimeError("SamplerStateCallback: Lightning's fit loop has no data fetcher to re-create")
        iter(fetcher)  # new DataLoader iterator, now over the remaining order

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not called for the resumed epoch (Lightning skips it when restarting mid-epoch).
        # Re-attach: `reload_dataloaders_every_n_epochs` may have built a new sampler.
        sampler = self._attach(trainer)
        self._start_position, self._batches = sampler.position, 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1

    def state_dict(self) -> dict[str, Any]:
        if self._sampler is None:
            return dict(self._pending) if self._pending is not None else {}
        state = self._sampler.state_dict()
        state["position"] = min(self._start_position + self._batches * self._batch_size, self._sampler.num_samples)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict) if state_dict else None
