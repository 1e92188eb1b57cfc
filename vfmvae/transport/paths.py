"""The linear flow-matching path in both time conventions (docs/design.md, "Diffusion training").

Each diffusion model keeps the time convention its weights were trained with, because the
network embeds the raw ``t`` (docs/design.md, "Time conventions"):

* ``DATA_AT_ONE`` (LightningDiT, SiT ``transport/``): ``x_t = t·x_data + (1−t)·ε``,
  velocity target ``u = x_data − ε``; integration runs from ``t = 0`` (noise) to ``t = 1``.
* ``NOISE_AT_ONE`` (REG, REPA): ``x_t = (1−t)·x_data + t·ε``, target ``v = ε − x_data``;
  integration runs from ``t = 1`` (noise) to ``t = 0``.

Both describe the same straight line, so ``t_noise = 1 − t_data`` and the velocities differ
only in sign. Everything in ``vfmvae.transport`` takes the convention as an explicit argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import Tensor

from .state import expand_time


class TimeConvention(str, Enum):
    DATA_AT_ONE = "data_at_one"
    NOISE_AT_ONE = "noise_at_one"


# Model names accepted as shorthands for their native convention.
_ALIASES = {
    "data_at_one": TimeConvention.DATA_AT_ONE,
    "lightningdit": TimeConvention.DATA_AT_ONE,
    "sit": TimeConvention.DATA_AT_ONE,
    "noise_at_one": TimeConvention.NOISE_AT_ONE,
    "reg": TimeConvention.NOISE_AT_ONE,
    "repa": TimeConvention.NOISE_AT_ONE,
}


def parse_convention(convention: TimeConvention | str) -> TimeConvention:
    """Accept the enum, its value, or a model name (``"lightningdit"``, ``"reg"``)."""
    if isinstance(convention, TimeConvention):
        return convention
    key = str(convention).lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown time convention {convention!r}; expected one of {sorted(_ALIASES)}")
    return _ALIASES[key]


def convert_time(t: Tensor | float, source: TimeConvention | str, target: TimeConvention | str):
    """Express a time given in ``source`` convention in ``target`` convention (``1 − t`` or identity).

    When the conventions agree ``t`` is returned untouched, so comparisons against interval
    bounds stay exact in the native convention.
    """
    return t if parse_convention(source) == parse_convention(target) else 1 - t


def noise_time(t, convention: TimeConvention | str):
    """The REG-style time (``1`` = pure noise) of a time given in ``convention``."""
    return convert_time(t, convention, TimeConvention.NOISE_AT_ONE)


@dataclass(frozen=True)
class LinearPath:
    """Straight-line interpolant between data and Gaussian noise (docs/design.md, "Diffusion training").

    Shapes: ``x_data``/``noise`` ``(B, ...)`` (latents ``(B, C, h, w)`` or class tokens
    ``(B, D)``), ``t`` ``(B,)``.
    """

    convention: TimeConvention = TimeConvention.DATA_AT_ONE

    def __post_init__(self):
        object.__setattr__(self, "convention", parse_convention(self.convention))

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)``: weights of data and noise in ``x_t``."""
        if self.convention == TimeConvention.DATA_AT_ONE:
            return t, 1 - t
        return 1 - t, t

    def interpolate(self, x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha_t·x_data + sigma_t·noise``, shape of ``x_data``."""
        if x_data.shape != noise.shape:
            raise ValueError(f"data and noise shapes differ: {tuple(x_data.shape)} vs {tuple(noise.shape)}")
        alpha, sigma = self.coefficients(expand_time(t, x_data))
        return alpha * x_data + sigma * noise

    def velocity_target(self, x_data: Tensor, noise: Tensor) -> Tensor:
        """``d x_t / dt``: ``x_data − noise`` (data at one) or ``noise − x_data`` (noise at one)."""
        if self.convention == TimeConvention.DATA_AT_ONE:
            return x_data - noise
        return noise - x_data
