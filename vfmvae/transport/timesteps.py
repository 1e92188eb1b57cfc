"""Training-time distributions and sampling grids (docs/design.md, "Diffusion training" and "Sampling and guidance").

* Training ``t``: logit-normal ``sigmoid(N(m, s²))`` (LightningDiT stage 0, ``use_lognorm``)
  or uniform ``U(0, 1)`` (LightningDiT stage 1 from step 600k; REG always). LightningDiT's two
  stage yamls only toggle this flag, so :class:`TimestepSampler` switches at a step instead.
* ODE grids follow LightningDiT's ``sample_ode`` semantics: ``num_points`` is the number of
  **grid points** (250 points = 249 Euler steps), ``linspace(0, 1)`` in data-at-one time, then
  the timestep shift ``t' = s·t / (1 + (s−1)·t)`` (s = 0.3 packs points toward the noise end).
* The REG SDE grid: ``linspace(1, 0.04, num_points)`` in float64 plus a final ``0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .paths import TimeConvention, parse_convention

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")


@dataclass
class TimestepSampler:
    """Draws training times ``t`` of shape ``(B,)`` in ``[0, 1]``.

    ``uniform_from_step``: from this optimizer step on the distribution is uniform whatever
    ``distribution`` says (LightningDiT: 600_000). ``None`` never switches.
    The logit-normal with mean 0 is symmetric about 1/2, so it reads the same in either time
    convention; a non-zero mean is meant in the transport's own convention.
    """

    distribution: str = "logit_normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    uniform_from_step: int | None = None

    def __post_init__(self):
        if self.distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"unknown time distribution {self.distribution!r}; expected one of {TIME_DISTRIBUTIONS}")
        if self.logit_normal_std <= 0:
            raise ValueError(f"logit_normal_std must be positive, got {self.logit_normal_std}")
        if self.uniform_from_step is not None and self.uniform_from_step < 0:
            raise ValueError(f"uniform_from_step must be >= 0 or None, got {self.uniform_from_step}")

    def distribution_at(self, step: int) -> str:
        """Which distribution is active at optimizer step ``step``."""
        if self.uniform_from_step is not None and step >= self.uniform_from_step:
            return "uniform"
        return self.distribution

    def sample(
        self,
        batch: int,
        *,
        step: int = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``(batch,)`` times, drawn in float32 then cast (as the official samplers)."""
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        if self.distribution_at(step) == "uniform":
            t = torch.rand(batch, generator=generator, device=device)
        else:
            u = torch.randn(batch, generator=generator, device=device)
            t = torch.sigmoid(u * self.logit_normal_std + self.logit_normal_mean)
        return t.to(dtype)


def shift_time(t: Tensor, shift: float | None) -> Tensor:
    """LightningDiT timestep shift in data-at-one time: ``t' = s·t / (1 + (s−1)·t)``.

    ``s < 1`` moves points toward ``t = 0`` (noise). ``None``, ``0`` and ``1`` mean no shift
    (the official sampler skips the shift when ``timestep_shift`` is 0).
    """
    if shift is None or shift == 0 or shift == 1:
        return t
    if shift < 0:
        raise ValueError(f"timestep_shift must be positive (or 0/None for none), got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def ode_time_grid(
    num_points: int,
    *,
    shift: float | None = None,
    convention: TimeConvention | str = TimeConvention.DATA_AT_ONE,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(num_points,)`` ODE grid from noise to data in the given convention.

    Data at one: ``shift(linspace(0, 1, n))`` in ``dtype`` (float32 reproduces the official
    grid bit for bit). Noise at one: ``1 −`` that grid, so a shift packs points toward the
    noise end in either convention.
    """
    if num_points < 2:
        raise ValueError(f"an ODE grid needs at least 2 points (1 step), got num_points={num_points}")
    grid = shift_time(torch.linspace(0.0, 1.0, num_points, dtype=dtype, device=device), shift)
    if parse_convention(convention) == TimeConvention.NOISE_AT_ONE:
        grid = 1 - grid
    return grid


def sde_time_grid(num_points: int, *, last_time: float = 0.04, device: torch.device | str | None = None) -> Tensor:
    """REG Euler–Maruyama grid in noise-at-one time: ``linspace(1, last_time, n) ++ [0]``, float64.

    ``num_points`` = 250 gives 249 stochastic steps and one deterministic step to 0.
    """
    if num_points < 2:
        raise ValueError(f"the SDE grid needs at least 2 points before the final 0, got num_points={num_points}")
    if not 0.0 < last_time < 1.0:
        raise ValueError(f"last_time must lie in (0, 1), got {last_time}")
    grid = torch.linspace(1.0, last_time, num_points, dtype=torch.float64, device=device)
    return torch.cat([grid, torch.zeros(1, dtype=torch.float64, device=device)])
