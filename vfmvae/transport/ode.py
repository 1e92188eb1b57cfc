"""Fixed-grid probability-flow ODE samplers: Euler and Heun (docs/design.md, "Sampling and guidance").

LightningDiT samples with torchdiffeq's fixed-grid ``euler`` over a shifted grid of 250
points; a hand-written loop over the same grid is equivalent (docs/design.md, "Sampling and guidance"):
``x_{i+1} = x_i + (t_{i+1} − t_i)·v(x_i, t_i)``. Heun is the explicit trapezoid rule
(torchdiffeq ``heun2``): an Euler predictor, then the average of the two slopes.

The grid runs from noise to data in the velocity function's own convention (see
:func:`vfmvae.transport.timesteps.ode_time_grid`), so the same loop serves both conventions.
Nothing here is random: a given start state gives the same trajectory every time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .state import State, VelocityFn, as_components, batch_size, time_vector, tree_map

ODE_METHODS = ("euler", "heun")


def _check_grid(grid: Tensor) -> None:
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"the time grid must be 1-D with at least 2 points, got shape {tuple(grid.shape)}")
    steps = grid[1:] - grid[:-1]
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError("the time grid must be strictly monotonic")


def _step(x: State, v: State, dt: Tensor) -> State:
    """``x + dt·v`` component-wise."""
    return tree_map(lambda xc, vc: xc + dt * vc, x, v)


@torch.no_grad()
def integrate_ode(
    velocity_fn: VelocityFn,
    state: State,
    y: Tensor,
    grid: Tensor,
    *,
    method: str = "euler",
    return_trajectory: bool = False,
) -> State | list[State]:
    """Integrate ``dx/dt = v(x, t, y)`` along ``grid``.

    Args:
        velocity_fn: ``v(state, t (B,), y (B,))`` in the grid's time convention.
        state: start state at ``grid[0]`` (noise), e.g. ``(B, C, h, w)``.
        y: ``(B,)`` class ids passed through to ``velocity_fn``.
        grid: ``(N,)`` times; ``N`` grid points = ``N − 1`` steps.
        method: ``"euler"`` or ``"heun"``.
        return_trajectory: return all ``N`` states (entry 0 is ``state``) instead of the last.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; expected one of {ODE_METHODS}")
    _check_grid(grid)
    n = batch_size(state)
    if y.shape[:1] != (n,):
        raise ValueError(f"labels / conditions must have shape ({n}, ...), got {tuple(y.shape)}")
    grid = grid.to(as_components(state)[0].device)
    trajectory = [state]
    x = state
    for i in range(grid.numel() - 1):
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        v0 = velocity_fn(x, time_vector(t0, x), y)
        x_euler = _step(x, v0, dt)
        if method == "euler":
            x = x_euler
        else:
            v1 = velocity_fn(x_euler, time_vector(t1, x), y)
            x = _step(x, tree_map(lambda a, b: 0.5 * (a + b), v0, v1), dt)
        if return_trajectory:
            trajectory.append(x)
    return trajectory if return_trajectory else x


def euler_ode(velocity_fn: VelocityFn, state: State, y: Tensor, grid: Tensor, **kwargs):
    """Euler ODE sampler (LightningDiT ``sample_ode(sampling_method='euler')``)."""
    return integrate_ode(velocity_fn, state, y, grid, method="euler", **kwargs)


def heun_ode(velocity_fn: VelocityFn, state: State, y: Tensor, grid: Tensor, **kwargs):
    """Heun (trapezoid) ODE sampler: two velocity calls per step."""
    return integrate_ode(velocity_fn, state, y, grid, method="heun", **kwargs)
