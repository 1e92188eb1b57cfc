"""Classifier-free guidance as a wrapper around a velocity function (docs/design.md, "Sampling and guidance").

``guided = uncond + scale·(cond − uncond)`` on a doubled batch ``[state; state]`` with labels
``[y; null]``, applied only while ``t`` lies inside a guidance interval:

* LightningDiT: interval ``[0.125, 1]`` in data-at-one time (``forward_with_cfg`` skips
  guidance when ``t < cfg_interval_start``), guidance on **channels 0–2 only**
  (``cfg_channels=3``) to reproduce the published CFG numbers.
* REG: interval ``[0, 0.8]`` in noise-at-one time (``guidance_low <= t <= guidance_high``),
  all channels, plus class-token guidance with its own scale (``cls_cfg_scale``; a
  non-positive value keeps the conditional class-token velocity, as the official sampler).

The official REG sampler guides the SDE drift ``d = v − ½·w·s``; on the linear path
``d = (2 − t)·v + x`` is affine in ``v`` with the same ``x`` in both halves, so guiding ``v``
gives the same drift (up to float rounding). Both bounds of an interval are inclusive; when
the model's convention differs from the interval's, the bounds are mapped (``1 − bound``)
and compared with the model's raw ``t``, so the switch is exact at the mapped bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .paths import TimeConvention, parse_convention
from .state import State, VelocityFn, as_components, batch_size, expand_time, like, tree_map

# ``null_condition(y) -> y_null``: the unconditional condition in the shape of ``y`` (class ids: the null id).
NullConditionFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GuidanceInterval:
    """Closed interval ``[low, high]`` of times (in ``convention``) where guidance is on."""

    low: float = 0.0
    high: float = 1.0
    convention: TimeConvention = TimeConvention.DATA_AT_ONE

    def __post_init__(self):
        object.__setattr__(self, "convention", parse_convention(self.convention))
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"guidance interval needs 0 <= low <= high <= 1, got [{self.low}, {self.high}]")

    @classmethod
    def lightningdit(cls, start: float = 0.125) -> GuidanceInterval:
        """LightningDiT ``cfg_interval_start``: guided where ``t >= start`` (t = 1 is data)."""
        return cls(start, 1.0, TimeConvention.DATA_AT_ONE)

    @classmethod
    def reg(cls, low: float = 0.0, high: float = 0.8) -> GuidanceInterval:
        """REG ``guidance_low/high``: guided where ``low <= t <= high`` (t = 1 is noise)."""
        return cls(low, high, TimeConvention.NOISE_AT_ONE)

    def active(self, t: Tensor, t_convention: TimeConvention | str) -> Tensor:
        """Boolean ``(B,)`` mask: which entries of ``t`` (given in ``t_convention``) are guided."""
        low, high = self.low, self.high
        if parse_convention(t_convention) != self.convention:
            # Move the bounds, not t: `1 - t` would round (e.g. 1 - nextafter(0.25, 0) == 0.75 in
            # float32), whereas t compared with 1 - bound switches exactly at that bound.
            low, high = 1.0 - self.high, 1.0 - self.low
        return (t >= low) & (t <= high)


class ClassifierFreeGuidance:
    """Velocity function ``(state, t, y) -> state`` that applies CFG to ``velocity_fn``.

    Args:
        velocity_fn: the conditional velocity ``v(state, t, y)``; ``t`` in ``convention``.
        scale: guidance scale, or one scale per state component (REG: ``(cfg, cls_cfg)``).
            Guidance is on only when the first scale is > 1, as in both official samplers;
            a non-positive scale on a later component keeps its conditional velocity.
        convention: time convention of ``velocity_fn``.
        interval: where guidance applies; ``None`` = always.
        cfg_channels: guide only the first ``k`` channels (dim 1) of the first component;
            ``None`` = all. The remaining channels carry the conditional velocity.
        null_class: label of the unconditional branch (1000), used when ``null_condition`` is None.
        null_condition: ``y -> y_null`` for other condition types (a network's ``condition.null_like``).
    """

    def __init__(
        self,
        velocity_fn: VelocityFn,
        scale: float | Sequence[float],
        *,
        convention: TimeConvention | str,
        interval: GuidanceInterval | None = None,
        cfg_channels: int | None = None,
        null_class: int = 1000,
        null_condition: NullConditionFn | None = None,
    ):
        self.velocity_fn = velocity_fn
        self.scales = tuple(float(s) for s in scale) if isinstance(scale, Sequence) else (float(scale),)
        if not self.scales:
            raise ValueError("scale must not be an empty sequence")
        self.convention = parse_convention(convention)
        self.interval = interval
        if cfg_channels is not None and cfg_channels < 1:
            raise ValueError(f"cfg_channels must be a positive channel count or None (all), got {cfg_channels}")
        self.cfg_channels = cfg_channels
        self.null_class = null_class
        self.null_condition = null_condition
        self.enabled = self.scales[0] > 1.0

    def _scale_for(self, index: int) -> float:
        return self.scales[index] if len(self.scales) > 1 else self.scales[0]

    def active(self, t: Tensor) -> Tensor:
        """``(B,)`` mask of guided entries (all False when guidance is disabled)."""
        if not self.enabled:
            return torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        if self.interval is None:
            return torch.ones(t.shape, dtype=torch.bool, device=t.device)
        return self.interval.active(t, self.convention)

    def __call__(self, state: State, t: Tensor, y: Tensor) -> State:
        n = batch_size(state)
        if t.shape != (n,) or y.shape[:1] != (n,):
            raise ValueError(f"t must have shape ({n},) and y ({n}, ...), got {tuple(t.shape)} and {tuple(y.shape)}")
        parts = as_components(state)
        if len(self.scales) > 1 and len(self.scales) != len(parts):
            raise ValueError(f"{len(self.scales)} guidance scales for a state of {len(parts)} components")
        mask = self.active(t)
        # One host sync per network call, on purpose: outside the interval it halves the compute
        # (a step of an XL model costs far more than the sync).
        if not bool(mask.any()):
            # No entry guided: the conditional branch alone (what both official samplers return).
            return self.velocity_fn(state, t, y)
        doubled = tree_map(lambda c: torch.cat([c, c]), state)
        y_null = torch.full_like(y, self.null_class) if self.null_condition is None else self.null_condition(y)
        out = as_components(self.velocity_fn(doubled, torch.cat([t, t]), torch.cat([y, y_null])))
        guided = [self._combine(i, o[:n], o[n:], mask) for i, o in enumerate(out)]
        return like(state, guided)

    def _combine(self, index: int, cond: Tensor, uncond: Tensor, mask: Tensor) -> Tensor:
        """Guided velocity of state component ``index`` (``cond``/``uncond``: ``(B, ...)``)."""
        scale = self._scale_for(index)
        if index > 0 and scale <= 0:
            return cond  # REG: cls_cfg_scale <= 0 keeps the conditional class-token velocity
        k = self.cfg_channels if index == 0 and self.cfg_channels is not None else None
        if k is not None and (cond.ndim < 2 or k > cond.shape[1]):
            raise ValueError(f"cfg_channels={k} exceeds the channels of a velocity of shape {tuple(cond.shape)}")
        k = cond.shape[1] if k is None else k
        guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        guided = torch.where(expand_time(mask, guided), guided, cond[:, :k])
        # Channels past k keep the conditional prediction (LightningDiT's 3-channel quirk).
        return guided if k == cond.shape[1] else torch.cat([guided, cond[:, k:]], dim=1)


def lightningdit_doubled_cfg(
    velocity_fn: VelocityFn,
    scale: float,
    *,
    interval: GuidanceInterval | None = None,
    cfg_channels: int | None = 3,
    convention: TimeConvention | str = TimeConvention.DATA_AT_ONE,
) -> VelocityFn:
    """The official LightningDiT ``forward_with_cfg`` numerics on a ``[cond; uncond]`` batch.

    For reproducing official trajectories of the *whole* doubled batch (the fixture stores
    both halves). Input: state ``(2n, ...)`` and labels ``[y; null]`` prepared by the caller.
    The network always sees ``[first half; first half]``; the first ``cfg_channels`` channels
    of both halves get the guided value (or the conditional one outside the interval,
    judged on ``t[0]``), the remaining channels keep each half's own prediction.
    Use :class:`ClassifierFreeGuidance` for normal sampling: its output equals the first half.
    """
    convention = parse_convention(convention)

    def fn(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if x.shape[0] % 2:
            raise ValueError(f"the doubled CFG batch must have an even size, got {x.shape[0]}")
        half = x[: x.shape[0] // 2]
        out = velocity_fn(torch.cat([half, half]), t, y)
        k = out.shape[1] if cfg_channels is None else cfg_channels
        eps, rest = out[:, :k], out[:, k:]
        cond, uncond = eps.chunk(2)
        on = interval is None or bool(interval.active(t[:1], convention)[0])
        half_eps = uncond + scale * (cond - uncond) if on else cond
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)

    return fn
