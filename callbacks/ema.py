"""`EMACallback`: the project's one EMA mechanism, for tokenizer and diffusion runs alike (docs/design.md, "EMA").

The numbers live in `vfmvae.utils.ema.EMA` (plain PyTorch: the update rules, the swap, the state, FSDP2
shards). This callback wires one such EMA into a run:

- builds it in ``on_fit_start``, after the strategy has placed (and under FSDP2 sharded) the modules;
- updates it once per optimiser step (whenever ``trainer.global_step`` advanced: gradient accumulation
  and the tokenizer's manual two-optimiser iteration both give one update per step, as the official
  loops do; a guard-skipped step that still counts as a step updates it too, as before);
- swaps the EMA weights in for validation and back afterwards;
- keeps the raw weights in a checkpoint written while the EMA is swapped in;
- saves and restores the EMA as its checkpoint state, ``checkpoint["callbacks"]["EMACallback"]["ema"]``.

Why one callback and not an EMA inside each LightningModule: the EMA is cross-cutting (both run types,
the same swap/save/restore rules), and the diffusion runs already depended on this callback for their
FSDP2-sharded EMA, `vfmvae sample` and the probes. Diffusion runs list it in their YAMLs; the
tokenizer, which used to keep its own copy of the same logic, adds it itself (`TokenizerModule.
configure_callbacks`, from its ``ema_halflife_nimg`` / ``ema_rampup`` hyper-parameters), because its
export *is* the EMA and a run without one must not be possible.

What is averaged: ``attributes``, dotted sub-module names on the LightningModule (``[net]``), or, when
not given, the modules the LightningModule names in ``ema_modules()`` (the tokenizer: the stage's
trainable generator modules, which differ per stage). Frozen parameters are never averaged.

Images per optimiser step (the half-life rule; docs/design.md, "EMA"): the LightningModule's ``global_batch_size``
when it has one, else the train loader's batch size x world size x accumulation. The ramp-up counts
images with the EMA's own counter, which checkpoints carry across resumes and, for the tokenizer, across
stage hand-offs: it equals the tokenizer's global image counter.

Consumers read ``EMACallback.ema`` (or :func:`find_ema`; `TokenizerModule.ema` returns the same object): the
sample grid, the SE-CKNNA probe, the reconstruction grid, the tokenizer's validation and export. Callbacks
run in list order, and a LightningModule's own callbacks come after the YAML's, so a consumer may run in
``on_train_batch_end`` before this callback: reading ``.ema`` then applies the step's pending update first
(once), so every consumer sees the EMA of every optimiser step taken so far, whatever the order.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from vfmvae.utils.ema import EMA, EMA_PRESETS, EMAConfig

__all__ = ["EMACallback", "find_ema", "find_ema_callback"]


def find_ema_callback(trainer: Trainer) -> EMACallback | None:
    """The run's `EMACallback`, or ``None``."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMACallback)), None)


def find_ema(trainer: Trainer) -> EMA | None:
    """The run's EMA (built in ``on_fit_start``), or ``None`` when there is none yet."""
    cb = find_ema_callback(trainer)
    return None if cb is None else cb.ema


class EMACallback(Callback):
    """EMA of chosen LightningModule sub-modules; see the module docstring.

    Args:
        attributes: sub-module names on the LightningModule; ``None``: its ``ema_modules()``.
        preset: a `vfmvae.utils.ema.EMA_PRESETS` key (``"tokenizer"``: half-life 160k images, ramp-up
            0.05; ``"dit"``: decay 0.9999 per step).
        halflife_nimg / decay: override the preset's half-life (images) or decay.
        config: a complete `EMAConfig` instead of ``preset`` and its overrides (from Python).
    """

    def __init__(
        self,
        attributes: Sequence[str] | None = None,
        preset: str = "tokenizer",
        halflife_nimg: float | None = None,
        decay: float | None = None,
        config: EMAConfig | None = None,
    ) -> None:
        if isinstance(attributes, str):
            attributes = [attributes]
        if attributes is not None and not attributes:
            raise ValueError("EMACallback: give at least one attribute name, or none to use ema_modules()")
        if preset not in EMA_PRESETS:
            raise KeyError(f"unknown EMA preset {preset!r}; choose from {sorted(EMA_PRESETS)}")
        overrides = {k: v for k, v in dict(halflife_nimg=halflife_nimg, decay=decay).items() if v is not None}
        if config is not None and overrides:
            raise ValueError("EMACallback: give either config or halflife_nimg / decay overrides, not both")
        self.config = config or EMAConfig(**{**EMA_PRESETS[preset].__dict__, **overrides})
        self.attributes = None if attributes is None else list(attributes)
        self._ema: EMA | None = None
        self._run: tuple[weakref.ref, weakref.ref] | None = None  # (trainer, module) of the fit, for `ema`
        self._pending_state: dict[str, Any] | None = None
        self._last_global_step: int | None = None
        self._swapped_by_us = False

    # ------------------------------------------------------------------ construction
    def _modules(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        if self.attributes is None:
            if not hasattr(pl_module, "ema_modules"):
                raise AttributeError(
                    f"EMACallback without attributes needs {type(pl_module).__name__}.ema_modules(); "
                    "or name the sub-modules to average, e.g. attributes: [net]"
                )
            return dict(pl_module.ema_modules())
        modules: dict[str, nn.Module] = {}
        for name in self.attributes:
            try:
                mod = operator.attrgetter(name)(pl_module)
            except AttributeError as err:
                raise AttributeError(f"EMACallback: LightningModule has no attribute {name!r}") from err
            if not isinstance(mod, nn.Module):
                raise TypeError(f"EMACallback: {name!r} is a {type(mod).__name__}, not an nn.Module")
            modules[name] = mod
        return modules

    def _build(self, pl_module: LightningModule) -> EMA:
        if self._ema is None:
            self._ema = EMA(self._modules(pl_module), self.config)
            if self._pending_state is not None:
                self._ema.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._ema

    @property
    def ema(self) -> EMA | None:
        """The EMA (``None`` before it is built), with every optimiser step taken so far applied."""
        if self._ema is not None and self._run is not None:
            trainer, pl_module = self._run[0](), self._run[1]()
            if trainer is not None and pl_module is not None:
                return self.current(trainer, pl_module)
        return self._ema

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After strategy.setup: modules are on their device and, under FSDP2, sharded.
        self._build(pl_module)
        self._run = (weakref.ref(trainer), weakref.ref(pl_module))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._build(pl_module)
        self._last_global_step = trainer.global_step

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._run = None

    # ------------------------------------------------------------------ update
    def _images_per_step(self, trainer: Trainer, pl_module: LightningModule) -> int:
        own = getattr(pl_module, "global_batch_size", None)
        if isinstance(own, int) and own > 0:
            return own
        batch = getattr(trainer.train_dataloader, "batch_size", None)
        if batch is None:
            raise ValueError(
                "EMACallback (half-life rule) cannot tell the images per optimiser step: give the "
                "LightningModule a global_batch_size attribute, or use a DataLoader with a batch_size"
            )
        return int(batch) * trainer.world_size * trainer.accumulate_grad_batches

    def current(self, trainer: Trainer, pl_module: LightningModule) -> EMA:
        """The EMA with every optimiser step taken so far applied (updates now if this step's update is pending)."""
        ema = self._build(pl_module)
        if self._last_global_step is None:
            self._last_global_step = trainer.global_step
        if trainer.global_step == self._last_global_step:
            return ema  # no optimiser step since the last update (accumulating)
        self._last_global_step = trainer.global_step
        images = self._images_per_step(trainer, pl_module) if self.config.mode == "halflife" else None
        beta = ema.update(batch_size=images)
        pl_module.log("train/ema_beta", beta, on_step=True, on_epoch=False, prog_bar=False, rank_zero_only=True)
        return ema

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.current(trainer, pl_module)

    # ------------------------------------------------------------------ EMA weights for validation
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ema = self._build(pl_module)
        if not ema.swapped:
            ema.swap_in()
            self._swapped_by_us = True

    def _swap_out(self) -> None:
        if self._swapped_by_us and self._ema is not None:
            self._ema.swap_out()
            self._swapped_by_us = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out()  # checkpoint callbacks run after this one (Lightning orders them last)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._swap_out()  # never leave EMA weights in the training modules

    # ------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint written while the EMA is swapped in (e.g. a save during validation) would store
        # the EMA values as the raw weights: put the raw ones back.
        ema = self._ema
        if ema is None or not ema.swapped or "state_dict" not in checkpoint:
            return
        sd = checkpoint["state_dict"]
        for name, raw in zip(ema.param_names + ema.buffer_names, ema.shadow_params + ema.shadow_buffers):
            if name in sd:
                sd[name] = raw.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        if self._ema is None:
            return {"ema": self._pending_state} if self._pending_state is not None else {}
        return {"ema": self._ema.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if "ema" not in state_dict:
            raise KeyError("EMACallback checkpoint state lacks 'ema'")
        if self._ema is None:
            self._pending_state = state_dict["ema"]
        else:
            self._ema.load_state_dict(state_dict["ema"])
