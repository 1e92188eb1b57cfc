"""REG's Euler–Maruyama SDE sampler (docs/design.md, "Sampling and guidance"; REG ``samplers.euler_maruyama_sampler``).

In noise-at-one time ``t`` (REG's convention) on the linear path:

* diffusion coefficient ``w(t) = 2t``;
* score from velocity ``s = (r·v − x) / var`` with ``r = −(1 − t)``, ``var = t² − r·t``
  (``= −((1 − t)·v + x) / t``, written as the official ``get_score_from_velocity``);
* drift ``d = v − ½·w·s``; update ``x ← x + d·Δt + sqrt(w)·sqrt(|Δt|)·ξ`` with ``Δt < 0``;
* grid ``linspace(1, 0.04, N) ++ [0]``: ``N − 1`` stochastic steps, then one deterministic
  Euler step 0.04 → 0 that returns the mean.

The state (latent, or the REG tuple ``(latent, class_token)``) is kept in float64; the noise
is drawn per step, before the velocity call, one ``randn`` per component in order (latent,
then class token), in float64. With ``generator=None`` the global RNG is used, so after the
same ``torch.manual_seed`` the draws equal the official sampler's. Guidance is applied by the
velocity function (see :mod:`vfmvae.transport.guidance` for why guiding ``v`` equals
guiding ``d``).

A velocity function in data-at-one convention is accepted too: it is called at ``1 − t`` and
its velocity negated, so LightningDiT models can be sampled with this SDE as well.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .paths import TimeConvention, parse_convention
from .state import State, VelocityFn, as_components, batch_size, expand_time, like, time_vector, tree_map
from .timesteps import sde_time_grid


def diffusion_coefficient(t: Tensor) -> Tensor:
    """``w(t) = 2t`` (REG ``compute_diffusion``)."""
    return 2 * t


def score_from_velocity(v: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """Score of ``p_t`` from the velocity on the noise-at-one linear path; ``t`` is ``(B,)``."""
    t = expand_time(t, x)
    ratio = -(1 - t)  # alpha_t / d_alpha_t with alpha_t = 1 − t, d_alpha_t = −1
    var = t**2 - ratio * t  # sigma_t² − ratio·d_sigma_t·sigma_t
    return (ratio * v - x) / var


def _noise_at_one_velocity(velocity_fn: VelocityFn, convention: TimeConvention) -> VelocityFn:
    if convention == TimeConvention.NOISE_AT_ONE:
        return velocity_fn

    def fn(state: State, t: Tensor, y: Tensor) -> State:
        return tree_map(lambda v: -v, velocity_fn(state, 1 - t, y))

    return fn


def _drift(velocity_fn: VelocityFn, state: State, t: Tensor, y: Tensor) -> State:
    """``d = v − ½·w(t)·s`` for every component, in float64."""
    v = tree_map(lambda vc, xc: vc.to(xc.dtype), velocity_fn(state, time_vector(t, state), y), state)
    tv = time_vector(t, state)
    w = diffusion_coefficient(t)
    return tree_map(lambda vc, xc: vc - 0.5 * w * score_from_velocity(vc, xc, tv), v, state)


@torch.no_grad()
def euler_maruyama_sde(
    velocity_fn: VelocityFn,
    state: State,
    y: Tensor,
    *,
    num_steps: int = 250,
    last_time: float = 0.04,
    grid: Tensor | None = None,
    convention: TimeConvention | str = TimeConvention.NOISE_AT_ONE,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    state_dtype: torch.dtype = torch.float64,
) -> State | list[State]:
    """Sample with the REG SDE from ``state`` (pure noise at ``t = 1``).

    Args:
        velocity_fn: ``v(state, t (B,), y (B,))`` (guidance already wrapped in); it receives
            the float64 state and times, see :func:`vfmvae.transport.state.cast_velocity_fn`.
        state: initial noise, ``(B, C, h, w)`` or ``((B, C, h, w), (B, D))`` for REG.
        y: ``(B,)`` class ids.
        num_steps: grid points before the final 0 (REG ``--num-steps``, 250).
        last_time: last stochastic time (0.04).
        grid: explicit noise-at-one grid ending in 0 (overrides ``num_steps``/``last_time``).
        convention: time convention of ``velocity_fn``.
        generator: RNG for the per-step noise (``None``: global RNG, as the official code).
        return_trajectory: return the ``state_dtype`` state at every grid point (entry 0 is the input).
        state_dtype: integration precision (float64 as the official sampler).

    Returns the final state (the mean of the last step) in the input's dtype.
    """
    convention = parse_convention(convention)
    n = batch_size(state)
    if y.shape[:1] != (n,):
        raise ValueError(f"labels / conditions must have shape ({n}, ...), got {tuple(y.shape)}")
    device = as_components(state)[0].device
    grid = (
        sde_time_grid(num_steps, last_time=last_time, device=device) if grid is None else grid.to(device, state_dtype)
    )
    if grid.ndim != 1 or grid.numel() < 2 or float(grid[-1]) != 0.0 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("the SDE grid must be strictly decreasing noise-at-one times ending in 0")
    v_fn = _noise_at_one_velocity(velocity_fn, convention)
    in_dtypes = [c.dtype for c in as_components(state)]
    x = tree_map(lambda c: c.to(state_dtype), state)
    trajectory = [x]
    for i in range(grid.numel() - 2):
        t_cur, dt = grid[i], grid[i + 1] - grid[i]
        # Noise first, component by component (latent, then class token), as REG draws it.
        deps = [
            torch.randn(c.shape, dtype=c.dtype, device=c.device, generator=generator) * torch.sqrt(torch.abs(dt))
            for c in as_components(x)
        ]
        d = _drift(v_fn, x, t_cur, y)
        sqrt_w = torch.sqrt(diffusion_coefficient(t_cur))
        x = like(x, [xc + dc * dt + sqrt_w * ec for xc, dc, ec in zip(as_components(x), as_components(d), deps)])
        if return_trajectory:
            trajectory.append(x)
    # Last step t = last_time -> 0: deterministic, returns the mean.
    t_cur, dt = grid[-2], grid[-1] - grid[-2]
    d = _drift(v_fn, x, t_cur, y)
    x = tree_map(lambda xc, dc: xc + dt * dc, x, d)
    x_out = like(x, [c.to(dt_) for c, dt_ in zip(as_components(x), in_dtypes)])
    if return_trajectory:
        trajectory.append(x)
        return trajectory
    return x_out
