"""Atomic Lightning checkpoints (docs/design.md, "Checkpoints, resume and provenance": temporary name + rename).

Two ways to switch it on, both writing through :func:`vfmvae.utils.checkpoint_io.atomic_save`
(temp file in the same directory, fsync, ``os.replace``):

- the CheckpointIO plugin, for every checkpoint the trainer writes::

      trainer:
        plugins:
          - class_path: callbacks.atomic_checkpoint.AtomicCheckpointIO

- or :class:`AtomicModelCheckpoint` in place of ``ModelCheckpoint``: it installs the plugin
  on the strategy at ``setup`` (when the strategy still uses the stock ``TorchCheckpointIO``),
  so configs only need to list the callback.

Lightning's own ``TorchCheckpointIO`` already writes through an fsspec transaction, but
without ``fsync``: after a crash of the machine (not just the process) the renamed file can
be empty. Remote URLs (``s3://`` ...) fall back to the stock behaviour.

Sharded checkpoints written by ``ModelParallelStrategy`` (FSDP2, ``torch.distributed.checkpoint``)
are directories and do not pass through CheckpointIO; they are not covered here.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from vfmvae.utils.checkpoint_io import atomic_save

__all__ = ["AtomicCheckpointIO", "AtomicModelCheckpoint"]


def _is_local(path: _PATH) -> bool:
    s = os.fspath(path) if not isinstance(path, str) else path
    return "://" not in str(s) or str(s).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (fsync + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        local = str(path)[len("file://") :] if str(path).startswith("file://") else path
        atomic_save(checkpoint, local)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that makes sure the strategy writes through :class:`AtomicCheckpointIO`."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        current = getattr(strategy, "_checkpoint_io", None)
        if isinstance(current, AtomicCheckpointIO):
            return
        if current is None or type(current) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        else:
            rank_zero_warn(
                f"AtomicModelCheckpoint: the strategy uses a custom {type(current).__name__}; "
                "leaving it in place, so checkpoints may not be written atomically"
            )
