"""The per-device batch size a LightningModule derives from its global batch, handed to the DataModule."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def set_per_device_batch_size(dm: Any, per_device: int, global_batch_size: int, world_size: int, hint: str) -> None:
    """Set ``dm.config.batch_size`` (or ``dm.batch_size``) before the loaders are built.

    The global batch is the run's one batch knob (images per optimiser step over all ranks); the data
    module's own value is overwritten. A data config whose ``root`` is unset is refused with ``hint``.
    """
    owner = getattr(dm, "config", dm)
    if owner is None:
        return
    if hasattr(owner, "root") and owner.root is None:
        raise ValueError(f"the data root is not set: data.init_args.config.root; {hint}")
    if hasattr(owner, "batch_size"):
        if owner.batch_size != per_device:
            log.info(
                "per-device batch size %s -> %d (global_batch_size %d / %d ranks)",
                owner.batch_size,
                per_device,
                global_batch_size,
                world_size,
            )
        owner.batch_size = per_device


__all__ = ["set_per_device_batch_size"]
