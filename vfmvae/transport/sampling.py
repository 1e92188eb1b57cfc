"""Sampling any `vfmvae.dit.interface.DiffusionNetwork` with the paper's samplers (docs/design.md,
"Sampling and guidance"); plain PyTorch.

Shared by the periodic sample grids (`callbacks/sample_grid.py`) and `vfmvae sample`, so both run
the same code path: ``net.initial_state`` (noise) -> ``net.velocity`` in its native time convention,
called in the network's parameter dtype -> `vfmvae.transport.sample` (CFG with its interval, the null
condition from ``net.condition``) -> the latent component of the final state.

The network names its paper sampler (``net.sampler_presets``): LightningDiT ``lightningdit-cfg`` (Euler
ODE, 250 grid points, shift 0.3, CFG 4.0 on channels 0-2 where t >= 0.125); REG ``reg-cfg``
(Euler-Maruyama SDE, 250 points to 0.04 then 0, CFG 4.0 + class-token CFG 4.0 where t <= 0.8; the SDE
integrates in float64 and calls the network in its parameter dtype).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import SAMPLER_PRESETS, SamplerConfig, sample
from .paths import parse_convention
from .state import VelocityFn, cast_velocity_fn

__all__ = ["sampler_config", "velocity_fn", "sample_latents"]


def sampler_config(
    network: Any,
    preset: str | None = None,
    *,
    cfg_scale: float | None = None,
    num_steps: int | None = None,
    cfg_channels: int | str | None = "preset",
) -> SamplerConfig:
    """The network's paper sampler (or ``preset``), with optional overrides.

    ``network``: a `DiffusionNetwork` (or anything with ``sampler_presets`` and ``time_convention``).
    ``cfg_scale <= 1`` without a preset selects the no-CFG twin; ``cfg_channels="all"`` guides every
    channel (LightningDiT's published numbers guide only 3). A preset in another time convention than
    the network's is an error (its grid and guidance interval would be read the wrong way round).
    """
    presets = network.sampler_presets
    if preset is None:
        preset = presets.no_cfg if cfg_scale is not None and cfg_scale <= 1.0 else presets.default
    if preset not in SAMPLER_PRESETS:
        raise ValueError(f"unknown sampler preset {preset!r}; choose one of {sorted(SAMPLER_PRESETS)}")
    cfg = SAMPLER_PRESETS[preset]
    native = parse_convention(network.time_convention)
    if parse_convention(cfg.convention) != native:
        raise ValueError(
            f"sampler {preset!r} is in {cfg.convention} time, the network in {native.value}; "
            f"use a {native.value} preset (the network's own: {presets.default!r})"
        )
    changes: dict[str, Any] = {}
    if cfg_scale is not None:
        changes["cfg_scale"] = float(cfg_scale)
        if cfg.cls_cfg_scale is not None:
            changes["cls_cfg_scale"] = float(cfg_scale)
    if num_steps is not None:
        changes["num_steps"] = int(num_steps)
    if cfg_channels != "preset":
        changes["cfg_channels"] = None if cfg_channels in (None, "all") else int(cfg_channels)
    return cfg.replace(**changes) if changes else cfg


def velocity_fn(net: Any) -> VelocityFn:
    """``net.velocity`` as a sampler velocity function, called in the network's parameter dtype."""
    dtype = next(net.parameters()).dtype
    return cast_velocity_fn(net.velocity, dtype)


@torch.no_grad()
def sample_latents(
    net: Any, config: SamplerConfig, condition: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Normalised latents ``(B, C, h, w)`` float32 for conditions ``(B, ...)`` (the network in eval())."""
    was_training = net.training
    net.eval()
    try:
        noise = net.initial_state(condition.shape[0], generator, condition.device)
        out = sample(
            config, velocity_fn(net), noise, condition, generator=generator, null_condition=net.condition.null_like
        )
    finally:
        net.train(was_training)
    latent = out[0] if isinstance(out, tuple) else out
    return latent.float()
