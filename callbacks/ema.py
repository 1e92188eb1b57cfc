"""Lightning callback owning a :class:`vfmvae.utils.ema.EMA` over chosen LightningModule attributes.

- ``attributes``: names of sub-modules on the LightningModule (dotted paths allowed), e.g.
  ``["tokenizer.decoder", "tokenizer.latent_head"]`` or ``["dit"]``. Never the frozen VFM or a
  discriminator (conventions.md "Training state"); frozen parameters are skipped anyway.
- Updated in ``on_train_batch_end`` whenever the trainer's ``global_step`` advanced (i.e. an
  optimiser stepped: gradient accumulation and manual optimisation with several optimisers
  both give one EMA update per batch that stepped, as the official loops do).
- Swapped in for validation (and test / predict); swapped back afterwards.
- Saved in the checkpoint as this callback's state; restored on resume (before or after
  ``on_fit_start``, whichever the strategy does; FSDP2 restores after setup).

Image counter for the half-life ramp-up: by default the EMA counts images itself
(``global_batch_size`` per update, from the dataloader's batch size x world size x gradient
accumulation unless given). With ``nimg_attribute`` the LightningModule's own counter is used
instead (the project's global image counter, which survives tokenizer stage transitions); it
must hold the images seen *before* the current batch when ``on_train_batch_end`` runs, or set
``nimg_attribute_includes_batch=True`` if the module increments it inside ``training_step``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from vfmvae.utils.ema import EMA, EMA_PRESETS, EMAConfig

__all__ = ["EMACallback"]


class EMACallback(Callback):
    """EMA of ``pl_module.<attributes>``; see the module docstring.

    Args:
        attributes: sub-module names on the LightningModule to average.
        preset: an :data:`vfmvae.utils.ema.EMA_PRESETS` key (``"tokenizer"``, ``"dit"``, ``"debug"``).
        mode / halflife_nimg / rampup / decay / include_frozen: override fields of the preset.
        exclude: dotted name prefixes (relative to the LightningModule) to leave out.
        global_batch_size: images per optimiser step over all ranks (default: inferred).
        nimg_attribute: LightningModule attribute holding the global image counter.
        swap_for_eval: use EMA weights during validation / test / predict.
    """

    def __init__(
        self,
        attributes: Sequence[str],
        preset: str = "tokenizer",
        mode: str | None = None,
        halflife_nimg: float | None = None,
        rampup: float | None = -1.0,
        decay: float | None = None,
        include_frozen: bool | None = None,
        exclude: Sequence[str] = (),
        global_batch_size: int | None = None,
        nimg_attribute: str | None = None,
        nimg_attribute_includes_batch: bool = False,
        swap_for_eval: bool = True,
    ) -> None:
        if isinstance(attributes, str):
            attributes = [attributes]
        if not attributes:
            raise ValueError("EMACallback needs at least one attribute name to average")
        if preset not in EMA_PRESETS:
            raise KeyError(f"unknown EMA preset {preset!r}; choose from {sorted(EMA_PRESETS)}")
        overrides: dict[str, Any] = {
            k: v
            for k, v in dict(mode=mode, halflife_nimg=halflife_nimg, decay=decay, include_frozen=include_frozen).items()
            if v is not None
        }
        if rampup is None or rampup >= 0:  # -1 = keep the preset's ramp-up; None = none
            overrides["rampup"] = rampup
        base = EMA_PRESETS[preset]
        self.config = EMAConfig(**{**base.__dict__, **overrides})
        self.attributes = list(attributes)
        self.exclude = list(exclude)
        self.global_batch_size = global_batch_size
        self.nimg_attribute = nimg_attribute
        self.nimg_attribute_includes_batch = nimg_attribute_includes_batch
        self.swap_for_eval = swap_for_eval
        self.ema: EMA | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_global_step: int | None = None
        self._swapped_by_us = False

    # ------------------------------------------------------------------ construction
    def _build(self, pl_module: LightningModule) -> EMA:
        if self.ema is None:
            modules: dict[str, nn.Module] = {}
            for name in self.attributes:
                try:
                    mod = operator.attrgetter(name)(pl_module)
                except AttributeError as err:
                    raise AttributeError(f"EMACallback: LightningModule has no attribute {name!r}") from err
                if not isinstance(mod, nn.Module):
                    raise TypeError(f"EMACallback: {name!r} is a {type(mod).__name__}, not an nn.Module")
                modules[name] = mod
            self.ema = EMA(modules, self.config, exclude=self.exclude)
            if self._pending_state is not None:
                self.ema.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.ema

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After strategy.setup: modules are on their device and, under FSDP2, sharded.
        self._build(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._build(pl_module)
        self._last_global_step = trainer.global_step

    # ------------------------------------------------------------------ update
    def _batch_size(self, trainer: Trainer) -> int:
        if self.global_batch_size is not None:
            return int(self.global_batch_size)
        loader = trainer.train_dataloader
        bs = getattr(loader, "batch_size", None)
        if bs is None:
            raise ValueError(
                "EMACallback cannot infer the batch size from the train dataloader; "
                "pass global_batch_size= (images per optimiser step over all ranks)"
            )
        return int(bs) * trainer.world_size * trainer.accumulate_grad_batches

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._last_global_step is None:
            self._last_global_step = trainer.global_step
        if trainer.global_step == self._last_global_step:
            return  # no optimiser step (accumulating, or a skipped step)
        self._last_global_step = trainer.global_step
        ema = self._build(pl_module)
        batch_size = self._batch_size(trainer) if self.config.mode == "halflife" else None
        cur_nimg = None
        if self.nimg_attribute is not None:
            cur_nimg = float(operator.attrgetter(self.nimg_attribute)(pl_module))
            if self.nimg_attribute_includes_batch:
                cur_nimg -= batch_size or 0
        beta = ema.update(batch_size=batch_size, cur_nimg=cur_nimg)
        pl_module.log("ema/beta", beta, on_step=True, on_epoch=False, prog_bar=False, rank_zero_only=True)

    # ------------------------------------------------------------------ swap for evaluation
    def _swap_in(self, pl_module: LightningModule) -> None:
        if self.swap_for_eval and not self._swapped_by_us:
            self._build(pl_module).swap_in()
            self._swapped_by_us = True

    def _swap_out(self) -> None:
        if self._swapped_by_us and self.ema is not None:
            self.ema.swap_out()
            self._swapped_by_us = False

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._swap_out()  # never leave EMA weights in the training modules

    # ------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint written while EMA weights are swapped in (e.g. a user save during
        # validation) would store EMA values as the raw weights: put the raw ones back.
        if self.ema is None or not self.ema.swapped or "state_dict" not in checkpoint:
            return
        sd = checkpoint["state_dict"]
        for name, raw in zip(
            self.ema.param_names + self.ema.buffer_names, self.ema.shadow_params + self.ema.shadow_buffers
        ):
            if name in sd:
                sd[name] = raw.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {"ema": self._pending_state} if self._pending_state is not None else {}
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if "ema" not in state_dict:
            raise KeyError("EMACallback checkpoint state lacks 'ema'")
        if self.ema is None:
            self._pending_state = state_dict["ema"]
        else:
            self.ema.load_state_dict(state_dict["ema"])
