"""On resume, this run's optimiser hyper-parameters replace the ones restored from the checkpoint.

An optimiser's ``state_dict`` holds its ``param_groups`` (``lr``, ``betas``, ``weight_decay``, ``eps``, ...)
next to its state, so resuming with ``--model.init_args.lr 1e-4`` built an AdamW with lr 1e-4, and then
Lightning's restore of the optimiser state put the checkpoint's lr back: the new value was silently ignored.
This callback records the hyper-parameters of the freshly configured optimisers (``on_fit_start``, before the
restore) and writes them back after it (``on_train_start``), keeping the restored moments. With an lr
scheduler the restored lr is scaled by new/old base lr and the scheduler's ``base_lrs`` are updated, which is
exact for multiplicative schedules (warm-up, cosine to 0, step decay). Each change is logged on one line.

Added by the CLI to every resumed ``fit`` (`lightning_modules/cli.py`); a no-op when nothing changed.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["ResumeArgumentsCallback"]

log = logging.getLogger(__name__)

_SKIP = ("params", "initial_lr")  # the parameters themselves; the scheduler's bookkeeping (handled below)


class ResumeArgumentsCallback(Callback):
    """Write this run's optimiser hyper-parameters over the restored ones (see the module docstring)."""

    def __init__(self) -> None:
        self._fresh: list[list[dict[str, Any]]] = []
        self._fresh_base_lrs: list[list[float] | None] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fresh = [
            [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups] for o in trainer.optimizers
        ]
        self._fresh_base_lrs = [
            list(getattr(c.scheduler, "base_lrs", None) or []) or None for c in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None or not self._fresh:
            return
        scheduled = bool(trainer.lr_scheduler_configs)
        for i, (optimizer, fresh_groups) in enumerate(zip(trainer.optimizers, self._fresh, strict=False)):
            for j, (group, fresh) in enumerate(zip(optimizer.param_groups, fresh_groups, strict=False)):
                for key, new in fresh.items():
                    if key in _SKIP or (key == "lr" and scheduled):
                        continue
                    old = group.get(key)
                    if _differs(old, new):
                        group[key] = new
                        log.info(
                            "resume: optimizer %d group %d %s: %s (checkpoint) -> %s (this run)", i, j, key, old, new
                        )
                if scheduled and "initial_lr" in fresh and _differs(group.get("initial_lr"), fresh["initial_lr"]):
                    old_base, new_base = group["initial_lr"], fresh["initial_lr"]
                    group["lr"] = group["lr"] * new_base / old_base
                    group["initial_lr"] = new_base
                    log.info("resume: optimizer %d group %d base lr: %s -> %s", i, j, old_base, new_base)
        for config, base_lrs in zip(trainer.lr_scheduler_configs, self._fresh_base_lrs, strict=False):
            if base_lrs is not None and hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = list(base_lrs)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return list(a) != list(b)
    return a != b
