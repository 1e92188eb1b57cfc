"""Lightning's progress bar counting optimiser steps of ``max_steps`` in step-based runs (docs/commands.md, "Console").

Our runs are step-based (``trainer.max_steps``; Lightning then sets ``max_epochs = -1``), and the epoch is an
artefact of the data loader's length. Lightning's bars show ``Epoch 3/-2`` and restart at every epoch, so the
time left is that of the epoch. The bars here keep one training bar from ``global_step`` to ``max_steps``
(a resumed run starts where it stopped), so the ETA is that of the run; epoch-based runs keep Lightning's
bars unchanged. The ``v_num`` field (the run's version string, cut to a few characters) is dropped: the run
folder is printed at the start.

`use_step_progress_bar(trainer)` (called by the CLI) swaps Lightning's bar (Rich, or tqdm without ``rich``;
the default or one a config names) for the matching class here before the run starts; a subclass is kept.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

__all__ = ["StepRichProgressBar", "StepTQDMProgressBar", "is_step_based", "use_step_progress_bar"]

STEP_DESCRIPTION = "Steps"


def is_step_based(trainer: Trainer) -> bool:
    """``max_steps`` bounds the run and no epoch limit is set (Lightning's ``max_epochs == -1``)."""
    return trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1)


def _metrics_without_version(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics.pop("v_num", None)
    return metrics


class StepRichProgressBar(RichProgressBar):
    """`RichProgressBar` with one training task over ``max_steps`` in step-based runs."""

    def _step_task(self, trainer: Trainer) -> None:
        if self.progress is None or self.train_progress_bar_id is not None:
            return
        self.train_progress_bar_id = self._add_task(trainer.max_steps, STEP_DESCRIPTION)
        self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not is_step_based(trainer):
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled:
            return
        self._step_task(trainer)  # created once: later epochs continue the same task
        self.refresh()

    def _initialize_train_progress_bar_id(self) -> None:  # Lightning's hook for a mid-epoch restart
        if is_step_based(self.trainer):
            self._step_task(self.trainer)
        else:
            super()._initialize_train_progress_bar_id()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if not is_step_based(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled:
            return
        self._step_task(trainer)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        return _metrics_without_version(super().get_metrics(trainer, pl_module))


class StepTQDMProgressBar(TQDMProgressBar):
    """`TQDMProgressBar` with one training bar over ``max_steps`` in step-based runs."""

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        if not is_step_based(trainer):
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # first epoch of this run (fresh or resumed): set up once
            bar.reset(total=trainer.max_steps)
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
            bar.set_description(STEP_DESCRIPTION)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if not is_step_based(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        return _metrics_without_version(super().get_metrics(trainer, pl_module))


_STEP_BARS = {RichProgressBar: StepRichProgressBar, TQDMProgressBar: StepTQDMProgressBar}


def use_step_progress_bar(trainer: Trainer) -> None:
    """Replace Lightning's own bar (exactly its class, default or configured) by the step-counting subclass.

    The bar has not run yet, so its state (refresh rate, theme, leave, ...) is carried over as is.
    """
    for i, callback in enumerate(trainer.callbacks):
        step_class = _STEP_BARS.get(type(callback))
        if step_class is not None:
            replacement = step_class.__new__(step_class)
            replacement.__dict__.update(callback.__dict__)
            trainer.callbacks[i] = replacement
