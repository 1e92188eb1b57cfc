"""Sampling a diffusion network with the paper's samplers (diffusion.md §3.4); plain PyTorch.

Shared by the periodic sample grids (`callbacks/sample_grid.py`) and `scripts/sample.py`, so both
run exactly the same code path: network -> velocity function in its native time convention ->
`vfmvae.transport.sample` (which wraps CFG with its interval) -> normalised latents.

* LightningDiT (t = 1 data): state = latent ``(B, C, h, w)``; default preset ``lightningdit-cfg``
  (Euler ODE, 250 grid points, shift 0.3, CFG 4.0 on channels 0-2 where t >= 0.125).
* REG (t = 1 noise): state = ``(latent, class token (B, 768))``, both N(0, I) at t = 1; default
  ``reg-cfg`` (Euler-Maruyama SDE, 250 points to 0.04 then 0, CFG 4.0 + class-token CFG 4.0 where
  t <= 0.8). The SDE integrates in float64 and calls the network in its parameter dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vfmvae.transport import SAMPLER_PRESETS, SamplerConfig, cast_velocity_fn, reg_velocity_fn, sample

DEFAULT_SAMPLERS = {"lightningdit": "lightningdit-cfg", "reg": "reg-cfg"}
NO_CFG_SAMPLERS = {"lightningdit": "lightningdit", "reg": "reg"}
NATIVE = {"lightningdit": "data_at_one", "reg": "noise_at_one"}


def sampler_config(
    family: str,
    preset: str | None = None,
    *,
    cfg_scale: float | None = None,
    num_steps: int | None = None,
    cfg_channels: int | str | None = "preset",
) -> SamplerConfig:
    """The family's paper sampler (or ``preset``), with optional overrides.

    ``cfg_scale=1`` selects the preset's no-CFG twin; ``cfg_channels="all"`` guides every channel
    (LightningDiT's published numbers guide only 3).
    """
    if family not in DEFAULT_SAMPLERS:
        raise ValueError(f"unknown network family {family!r}; choose one of {sorted(DEFAULT_SAMPLERS)}")
    if preset is None:
        preset = NO_CFG_SAMPLERS[family] if cfg_scale is not None and cfg_scale <= 1.0 else DEFAULT_SAMPLERS[family]
    if preset not in SAMPLER_PRESETS:
        raise ValueError(f"unknown sampler preset {preset!r}; choose one of {sorted(SAMPLER_PRESETS)}")
    cfg = SAMPLER_PRESETS[preset]
    if cfg.convention != NATIVE[family] and family == "reg":
        raise ValueError(f"sampler {preset!r} is in {cfg.convention} time, the REG network in {NATIVE[family]}")
    changes = {}
    if cfg_scale is not None:
        changes["cfg_scale"] = float(cfg_scale)
        if cfg.cls_cfg_scale is not None:
            changes["cls_cfg_scale"] = float(cfg_scale)
    if num_steps is not None:
        changes["num_steps"] = int(num_steps)
    if cfg_channels != "preset":
        changes["cfg_channels"] = None if cfg_channels in (None, "all") else int(cfg_channels)
    return cfg.replace(**changes) if changes else cfg


def velocity_fn(net: nn.Module, family: str):
    """The network as ``v(state, t, y)`` in its native convention, called in its parameter dtype."""
    dtype = next(net.parameters()).dtype
    if family == "reg":
        fn = reg_velocity_fn(lambda x, t, y, cls: tuple(net(x, t, y, cls)))
    else:
        fn = lambda x, t, y: net(x, t, y)
    return cast_velocity_fn(fn, dtype)


def initial_state(
    net: nn.Module, family: str, n: int, generator: torch.Generator | None, device: torch.device | str
) -> Tensor | tuple[Tensor, Tensor]:
    """Noise at the sampler's start: the latent, and for REG the class token, ~ N(0, I), float32."""
    cfg = net.config
    x = torch.randn((n, cfg.in_channels, cfg.input_size, cfg.input_size), generator=generator, device=device)
    if family != "reg":
        return x
    cls = torch.randn((n, cfg.cls_token_dim), generator=generator, device=device)
    return (x, cls)


@torch.no_grad()
def sample_latents(
    net: nn.Module, family: str, config: SamplerConfig, labels: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Normalised latents ``(B, C, h, w)`` float32 for class ids ``labels (B,)`` (the network in eval())."""
    was_training = net.training
    net.eval()
    try:
        noise = initial_state(net, family, labels.shape[0], generator, labels.device)
        out = sample(config, velocity_fn(net, family), noise, labels, generator=generator)
    finally:
        net.train(was_training)
    latent = out[0] if isinstance(out, tuple) else out
    return latent.float()


def class_labels(
    mode: str, n: int, num_classes: int, *, offset: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` class ids: ``"random"`` = ``randint(0, num_classes)`` (the paper's protocol) or
    ``"balanced"`` = ``(offset + i) % num_classes`` (equal counts when the total is a multiple)."""
    if mode == "random":
        return torch.randint(0, num_classes, (n,), generator=generator)
    if mode == "balanced":
        return (torch.arange(n) + offset) % num_classes
    raise ValueError(f"unknown label mode {mode!r}; choose 'random' or 'balanced'")
