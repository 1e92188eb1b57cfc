"""Exponential moving average of chosen sub-modules (docs/design.md, "EMA").

Two update rules, one class:

- ``"halflife"`` (tokenizer, StyleGAN / official VFM-VAE ``training_loop.py``):
  ``ema_nimg = halflife_nimg``; with ramp-up ``ema_nimg = min(ema_nimg, cur_nimg * rampup)``;
  ``beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))``; ``ema <- beta * ema + (1 - beta) * p``.
  ``cur_nimg`` is the number of images seen *before* this step (the official loop updates
  ``G_ema`` before ``cur_nimg += batch_size``), so the very first update has ``beta = 0`` and
  the EMA equals the weights. ``batch_size`` is the **global** batch (all ranks).
  Paper values: half-life 160k images, ramp-up 0.05 (beta = 0.99778 at batch 512).
- ``"decay"`` (LightningDiT / REG): fixed ``beta = 0.9999`` every
  optimiser step, EMA initialised as a copy of the weights.

Buffers (e.g. BatchNorm statistics) are copied, not averaged, as in the official code.
Shadows keep the parameter dtype, except fp16/bf16 parameters, whose shadows are fp32.

Only the sub-modules you pass are tracked, minus parameters with ``requires_grad=False`` at
construction (a frozen VFM is never averaged, and a discriminator is simply not passed). That is why
this is not Lightning's ``EMAWeightAveraging``, which deep-copies the whole LightningModule. In a
Lightning run the EMA is owned by `callbacks.ema.EMACallback`.

FSDP2 (``fully_shard``) parameters are DTensors. The shadow copies are DTensors with the same
sharding, and every update / swap works on the **local shards** with ``torch._foreach_*`` ops:
no all-gather, no communication at all (each rank averages its own shard). Build the EMA
*after* sharding so that the shadows are sharded too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

try:  # DTensor is public from torch 2.4; keep the import soft for exotic builds.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["EMAConfig", "EMA_PRESETS", "EMA", "ema_beta"]


@dataclass(frozen=True)
class EMAConfig:
    """EMA rule. ``halflife_nimg``/``rampup`` for ``mode="halflife"``, ``decay`` for ``mode="decay"``."""

    mode: Literal["halflife", "decay"] = "halflife"
    halflife_nimg: float = 160_000.0  # official ema_kimg 160
    rampup: float | None = 0.05  # official ema_rampup; None = no ramp-up
    decay: float = 0.9999  # LightningDiT / REG

    def __post_init__(self) -> None:
        if self.mode not in ("halflife", "decay"):
            raise ValueError(f"EMAConfig.mode must be 'halflife' or 'decay', got {self.mode!r}")
        if self.mode == "halflife" and not self.halflife_nimg > 0:
            raise ValueError(f"EMAConfig.halflife_nimg must be > 0, got {self.halflife_nimg}")
        if self.rampup is not None and not self.rampup > 0:
            raise ValueError(f"EMAConfig.rampup must be > 0 or None, got {self.rampup}")
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"EMAConfig.decay must be in [0, 1], got {self.decay}")


EMA_PRESETS: dict[str, EMAConfig] = {
    "tokenizer": EMAConfig(mode="halflife", halflife_nimg=160_000.0, rampup=0.05),
    "dit": EMAConfig(mode="decay", decay=0.9999),
    "debug": EMAConfig(mode="halflife", halflife_nimg=64.0, rampup=0.5),
}


def ema_beta(config: EMAConfig, batch_size: int | None, cur_nimg: float) -> float:
    """Averaging weight of the *old* EMA value for one update (see module docstring)."""
    if config.mode == "decay":
        return float(config.decay)
    if batch_size is None or batch_size <= 0:
        raise ValueError("EMA mode 'halflife' needs the global batch_size (> 0) of the step")
    ema_nimg = config.halflife_nimg
    if config.rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * config.rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (shares storage), or the tensor itself."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


class EMA:
    """EMA over named sub-modules.

    Args:
        modules: ``{"decoder": model.decoder, ...}`` or one module (names then carry no prefix).
        config: an :class:`EMAConfig` or a preset name from :data:`EMA_PRESETS`.

    Call :meth:`update` after every optimiser step; use ``with ema.swap(): ...`` to run
    validation or export with the averaged weights. ``state_dict``/``load_state_dict`` hold
    the shadows, the update count and the image counter.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module] | nn.Module,
        config: EMAConfig | str = "tokenizer",
    ) -> None:
        if isinstance(config, str):
            if config not in EMA_PRESETS:
                raise KeyError(f"unknown EMA preset {config!r}; choose from {sorted(EMA_PRESETS)}")
            config = EMA_PRESETS[config]
        self.config = config
        if isinstance(modules, nn.Module):
            modules = {"": modules}
        if not modules:
            raise ValueError("EMA needs at least one module to track")
        self.modules = dict(modules)
        self.param_names, self.buffer_names = self._select()
        with torch.no_grad():
            params, buffers = self._live()
            # Low-precision weights get an fp32 shadow: with beta = 0.9999 a bf16 lerp would
            # round every update away.
            self.shadow_params = [
                p.detach().clone().float() if p.dtype in (torch.float16, torch.bfloat16) else p.detach().clone()
                for p in params
            ]
            self.shadow_buffers = [b.detach().clone() for b in buffers]
        self.num_updates = 0
        self.nimg = 0  # images seen before the next update (used when update() gets no cur_nimg)
        self.swapped = False

    # ------------------------------------------------------------------ selection
    def _named(self, kind: str) -> Iterator[tuple[str, torch.Tensor]]:
        for key, module in self.modules.items():
            items = module.named_parameters() if kind == "p" else module.named_buffers()
            for name, t in items:
                yield (f"{key}.{name}" if key else name), t

    def _select(self) -> tuple[list[str], list[str]]:
        params, counts = [], dict.fromkeys(self.modules, 0)
        seen: set[int] = set()
        for key, module in self.modules.items():
            for name, p in module.named_parameters():
                full = f"{key}.{name}" if key else name
                if not p.requires_grad:
                    continue  # frozen (e.g. a VFM): never averaged
                counts[key] += 1
                if id(p) not in seen:  # a shared parameter is averaged once
                    seen.add(id(p))
                    params.append(full)
        empty = [k or "<module>" for k, n in counts.items() if n == 0]
        if empty:
            raise ValueError(
                f"EMA: no trainable parameters to average in {empty} (all frozen); do not pass frozen networks (VFM)"
            )
        buffers, seen = [], set()
        for n, b in self._named("b"):
            if id(b) not in seen:
                seen.add(id(b))
                buffers.append(n)
        return params, buffers

    def _live(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Current parameter / buffer tensors, looked up by name each call: robust to
        ``module.to()`` and to wrappers that re-register parameters (FSDP2)."""
        params, buffers = dict(self._named("p")), dict(self._named("b"))
        missing = [n for n in self.param_names if n not in params] + [n for n in self.buffer_names if n not in buffers]
        if missing:
            raise RuntimeError(f"EMA: tracked tensors disappeared from the modules: {missing[:10]}")
        return [params[n] for n in self.param_names], [buffers[n] for n in self.buffer_names]

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        params, buffers = self._live()
        for i, (s, p) in enumerate(zip(self.shadow_params, params)):
            if s.shape != p.shape:
                raise RuntimeError(f"EMA: shape of {self.param_names[i]} changed {tuple(s.shape)} -> {tuple(p.shape)}")
            if s.device != p.device:  # module moved after the EMA was built
                self.shadow_params[i] = s.to(p.device)
        for i, (s, b) in enumerate(zip(self.shadow_buffers, buffers)):
            if s.device != b.device or s.shape != b.shape:
                self.shadow_buffers[i] = b.detach().clone()
        loc = lambda ts: [_local(t) for t in ts]
        return loc(self.shadow_params), loc(params), loc(self.shadow_buffers), loc(buffers)

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, batch_size: int | None = None, cur_nimg: float | None = None) -> float:
        """One EMA step after an optimiser step; returns the beta used.

        ``batch_size``: global images in this step (required for ``"halflife"``; when given it
        also advances the internal image counter). ``cur_nimg``: images seen before this step;
        defaults to the internal counter (pass the project's global image counter to carry the
        ramp-up across tokenizer stages).
        """
        if self.swapped:
            raise RuntimeError("EMA.update() called while EMA weights are swapped in; swap back first")
        cur = float(self.nimg if cur_nimg is None else cur_nimg)
        beta = ema_beta(self.config, batch_size, cur)
        s_p, p, s_b, b = self._pairs()
        if s_p:
            # s <- s + (1 - beta) (p - s)  ==  beta * s + (1 - beta) * p, on local shards.
            p = [x if x.dtype == y.dtype else x.to(y.dtype) for x, y in zip(p, s_p)]
            torch._foreach_lerp_(s_p, p, 1.0 - beta)
        if s_b:
            torch._foreach_copy_(s_b, b)
        self.num_updates += 1
        if batch_size is not None:
            self.nimg = int(cur) + int(batch_size)
        return beta

    @torch.no_grad()
    def _exchange(self) -> None:
        s_p, p, s_b, b = self._pairs()
        for shadow, live in ((s_p, p), (s_b, b)):
            if not shadow:
                continue
            tmp = [t.clone() for t in live]
            torch._foreach_copy_(live, shadow)
            torch._foreach_copy_(shadow, tmp)

    def swap_in(self) -> None:
        """Put EMA weights into the modules (raw weights are kept in the shadows meanwhile)."""
        if self.swapped:
            raise RuntimeError("EMA weights are already swapped in")
        self._exchange()
        self.swapped = True

    def swap_out(self) -> None:
        """Restore the raw training weights."""
        if not self.swapped:
            raise RuntimeError("EMA weights are not swapped in")
        self._exchange()
        self.swapped = False

    @contextlib.contextmanager
    def swap(self) -> Iterator[EMA]:
        """``with ema.swap(): validate()``: EMA weights inside, raw weights restored after."""
        self.swap_in()
        try:
            yield self
        finally:
            self.swap_out()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """EMA values by full name (DTensors stay sharded), counters and config.

        While swapped, the EMA values live in the modules, so they are read from there.
        """
        params, buffers = self._live()
        ema_p = params if self.swapped else self.shadow_params
        ema_b = buffers if self.swapped else self.shadow_buffers
        return {
            "version": 1,
            "config": asdict(self.config),
            "num_updates": self.num_updates,
            "nimg": self.nimg,
            "params": {n: t.detach().clone() for n, t in zip(self.param_names, ema_p)},
            "buffers": {n: t.detach().clone() for n, t in zip(self.buffer_names, ema_b)},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Restore shadows and counters. ``strict``: the tracked names must match exactly."""
        if self.swapped:
            raise RuntimeError("EMA.load_state_dict() while swapped: call swap_out() first")
        for key in ("params", "buffers", "num_updates"):
            if key not in state:
                raise KeyError(f"EMA state_dict lacks {key!r}; is this an EMA checkpoint?")
        for kind, names, shadows in (
            ("params", self.param_names, self.shadow_params),
            ("buffers", self.buffer_names, self.shadow_buffers),
        ):
            saved = state[kind]
            missing = [n for n in names if n not in saved]
            unexpected = [n for n in saved if n not in names]
            if strict and (missing or unexpected):
                raise KeyError(f"EMA {kind} mismatch: missing {missing[:10]}, unexpected {unexpected[:10]}")
            for i, n in enumerate(names):
                if n in saved:
                    src = saved[n]
                    if tuple(src.shape) != tuple(shadows[i].shape):
                        raise ValueError(f"EMA {kind} {n}: saved shape {tuple(src.shape)} != {tuple(shadows[i].shape)}")
                    shadows[i].copy_(src.to(device=shadows[i].device) if not _is_dtensor(src) else src)
        if "config" in state:
            saved_cfg = dict(state["config"])
            if saved_cfg.get("mode") != self.config.mode:
                raise ValueError(f"EMA checkpoint mode {saved_cfg.get('mode')!r} != configured {self.config.mode!r}")
        self.num_updates = int(state["num_updates"])
        self.nimg = int(state.get("nimg", 0))


def _is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)
