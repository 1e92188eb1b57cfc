"""The diffusion training objective over any `vfmvae.dit.interface.DiffusionNetwork` (docs/design.md,
"Diffusion training").

Named terms in, named terms out, as `vfmvae.losses.TokenizerObjective`: the network says what its
training state is (`training_state`: the latent, plus REG's class token when alignment is on, with each
component's weight, and the projection targets); the objective noises it on the linear path in the
network's time convention, runs `training_forward` and returns

* ``mse``: mean over C, h, w of ``(v - u)^2`` of the latent (``u`` the path's velocity target);
* ``cos`` (latent-only states): ``1 - cos(v, u)`` over the channels, averaged over positions
  (LightningDiT's cosine term; weight ``cos_weight`` from the transport, 0 for REG);
* ``proj`` (with projection targets): the REPA projection loss, weight from the alignment targets;
* one MSE term per further state component (REG: ``cls_mse``), with the component's weight;
* ``total``: ``mse + cos_weight*cos + proj_weight*proj + sum_i w_i*term_i`` (in that order).

Random draws follow the official training scripts, chosen by the state's structure: a latent-only state
draws the noise, then ``t`` (LightningDiT ``Transport.sample``); a joint state draws ``t``, then one
noise per component in order (REG ``loss.py``: latent, then class token). Losses reduce in (at least)
float32. Outputs no term reads (``NetworkOutput.unused``, and the projections of a batch without
targets) enter the total as ``0 x`` their sum, so every parameter gets a gradient under DDP.
The result is bitwise that of `LightningDiTLoss` / `REGLoss` on the same draws (tests check it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .config import TransportConfig
from .losses import _draw, _f32, _times, channel_cosine_loss, mean_flat, projection_loss
from .paths import LinearPath, TimeConvention, parse_convention
from .state import as_components, like
from .timesteps import TimestepSampler

__all__ = ["DiffusionObjective"]

_RESERVED = ("mse", "cos", "proj", "total")


class DiffusionObjective:
    """``objective(net, latents (B, C, h, w), condition (B, ...), alignment=None, *, step=0) -> {name: scalar}``.

    Args:
        timestep_sampler: training-time distribution (switches to uniform at ``uniform_from_step``).
        convention: the transport's time convention; must be the network's (checked per call).
        cos_weight: weight of the latent cosine term of latent-only states.
    """

    def __init__(
        self,
        timestep_sampler: TimestepSampler,
        convention: TimeConvention | str,
        cos_weight: float = 1.0,
    ) -> None:
        if cos_weight < 0:
            raise ValueError(f"cos_weight must be >= 0, got {cos_weight}")
        self.timestep_sampler = timestep_sampler
        self.path = LinearPath(convention)
        self.cos_weight = cos_weight

    @classmethod
    def from_transport(cls, transport: TransportConfig) -> DiffusionObjective:
        return cls(transport.timestep_sampler(), transport.convention, transport.cos_weight)

    @property
    def convention(self) -> TimeConvention:
        return self.path.convention

    def __call__(
        self,
        net: Any,
        latents: Tensor,
        condition: Tensor,
        alignment: Mapping[str, Any] | None = None,
        *,
        step: int = 0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        if parse_convention(net.time_convention) != self.convention:
            raise ValueError(
                f"the objective's path is in {self.convention.value} time, the network's weights embed t in "
                f"{parse_convention(net.time_convention).value}"
            )
        ts = net.training_state(latents, alignment)
        comps = ts.components
        names = ts.term_names[1:]
        clash = [n for n in names if n in _RESERVED]
        if clash:
            raise ValueError(f"state component terms may not be named {clash} (reserved: {_RESERVED})")
        x = comps[0]
        if len(comps) == 1:  # LightningDiT order: noise, then t
            noises = [_draw(x, None, generator)]
            t = _times(self.timestep_sampler, x, None, step, generator)
        else:  # REG order: t, then the noise of each component
            t = _times(self.timestep_sampler, x, None, step, generator)
            noises = [_draw(c, None, generator) for c in comps]
        x_t = [self.path.interpolate(c, e, t) for c, e in zip(comps, noises)]
        targets = [self.path.velocity_target(c, e) for c, e in zip(comps, noises)]
        out = net.training_forward(like(ts.state, x_t), t, condition)
        preds = as_components(out.velocity)
        if len(preds) != len(targets) or any(p.shape != u.shape for p, u in zip(preds, targets)):
            raise ValueError(
                f"the network's velocity {[tuple(p.shape) for p in preds]} does not match the state "
                f"{[tuple(u.shape) for u in targets]}"
            )
        pred32, target32 = _f32(preds[0]), _f32(targets[0])
        terms = {"mse": mean_flat((pred32 - target32) ** 2).mean()}
        if len(comps) == 1:
            terms["cos"] = channel_cosine_loss(pred32, target32).mean()
        if ts.projection_targets is not None:
            terms["proj"] = projection_loss(ts.projection_targets, list(out.projections))
        for name, p, u in zip(names, preds[1:], targets[1:]):
            terms[name] = mean_flat((_f32(p) - _f32(u)) ** 2).mean()
        total = terms["mse"]
        if "cos" in terms and self.cos_weight:
            total = total + self.cos_weight * terms["cos"]
        if "proj" in terms:
            total = total + ts.projection_weight * terms["proj"]
        for name, weight in zip(names, ts.weights[1:]):
            total = total + weight * terms[name]
        unused = ([] if ts.projection_targets is not None else list(out.projections)) + list(out.unused)
        if unused:
            total = total + sum(o.float().sum() for o in unused) * 0.0
        terms["total"] = total
        return terms
