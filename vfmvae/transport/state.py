"""Sampler states and velocity-function plumbing (docs/design.md, "Sampling and guidance").

A *state* is what a sampler integrates: a single latent tensor ``(B, C, h, w)`` for
LightningDiT, or a tuple ``(latent (B, C, h, w), class_token (B, D))`` for REG, whose
velocity function moves both together (docs/design.md, "Time conventions").

A *velocity function* has the signature ``v(state, t, y) -> velocity_state`` where ``t`` is a
``(B,)`` tensor in the model's native time convention and ``y`` the ``(B,)`` class ids. The
samplers and guidance only ever see such callables, never a network (docs/design.md, "Layers of the code").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from torch import Tensor

State = Union[Tensor, tuple[Tensor, ...]]
VelocityFn = Callable[[State, Tensor, Tensor], State]


def is_tuple_state(state: State) -> bool:
    return isinstance(state, tuple)


def as_components(state: State) -> tuple[Tensor, ...]:
    """The state as a tuple of tensors (a bare tensor becomes a 1-tuple)."""
    if isinstance(state, Tensor):
        return (state,)
    if isinstance(state, tuple) and state and all(isinstance(c, Tensor) for c in state):
        return state
    raise TypeError(f"a sampler state must be a Tensor or a non-empty tuple of Tensors, got {type(state).__name__}")


def like(template: State, components: tuple[Tensor, ...] | list[Tensor]) -> State:
    """Rebuild a state with ``template``'s structure from ``components``."""
    components = tuple(components)
    return components if isinstance(template, tuple) else components[0]


def tree_map(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` component-wise to states of identical structure."""
    parts = [as_components(s) for s in states]
    if len({len(p) for p in parts}) != 1:
        raise ValueError(f"states have different numbers of components: {[len(p) for p in parts]}")
    return like(states[0], [fn(*cs) for cs in zip(*parts)])


def batch_size(state: State) -> int:
    """Common leading dimension of every component; an error names any mismatch."""
    sizes = [c.shape[0] if c.ndim > 0 else None for c in as_components(state)]
    if None in sizes or len(set(sizes)) != 1:
        raise ValueError(
            f"every state component needs the same batch dimension, got shapes "
            f"{[tuple(c.shape) for c in as_components(state)]}"
        )
    return sizes[0]


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``(B,)`` time vector so it broadcasts against ``x`` of shape ``(B, ...)``."""
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"time must have shape (B,) = ({x.shape[0]},) to match a tensor of shape "
            f"{tuple(x.shape)}, got {tuple(t.shape)}"
        )
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def time_vector(t: Tensor | float, state: State, dtype: torch.dtype | None = None) -> Tensor:
    """A ``(B,)`` tensor filled with the scalar time ``t`` (on the state's device).

    The dtype defaults to ``t``'s own when ``t`` is a tensor, otherwise to the state's:
    samplers keep the grid's precision (float64 grids for the REG SDE) and let the network
    adapter cast (see :func:`cast_velocity_fn`).
    """
    first = as_components(state)[0]
    if dtype is None:
        dtype = t.dtype if isinstance(t, Tensor) else first.dtype
    t = torch.as_tensor(t, dtype=dtype, device=first.device)
    if t.ndim != 0:
        raise ValueError(f"expected a scalar time, got shape {tuple(t.shape)}")
    return t.expand(batch_size(state)).clone()


def cast_velocity_fn(fn: VelocityFn, compute_dtype: torch.dtype = torch.float32) -> VelocityFn:
    """Wrap ``fn`` so that it runs in ``compute_dtype`` and answers in the caller's dtype.

    The REG sampler keeps its state (and its grid) in float64 but runs the network in the
    model dtype, casting the velocity back to float64, exactly as the official
    ``euler_maruyama_sampler`` does (``model_input.to(_dtype)``, ``v.to(float64)``).
    """

    def wrapped(state: State, t: Tensor, y: Tensor) -> State:
        out = fn(tree_map(lambda c: c.to(compute_dtype), state), t.to(compute_dtype), y)
        return tree_map(lambda o, s: o.to(s.dtype), out, state)

    return wrapped


def reg_velocity_fn(model_fn: Callable[..., tuple]) -> VelocityFn:
    """Adapt a REG SiT call ``model_fn(x, t, y, cls_token) -> (v, zs, cls_v)`` to a state velocity.

    The state is ``(x (B, C, h, w), cls (B, D))``; the projector outputs ``zs`` are dropped
    (they only matter for the training loss).
    """

    def wrapped(state: State, t: Tensor, y: Tensor) -> State:
        if not isinstance(state, tuple) or len(state) != 2:
            raise ValueError("a REG state is the tuple (latent, class_token)")
        v, _zs, cls_v = model_fn(state[0], t, y, state[1])
        return (v, cls_v)

    return wrapped
