"""Flow-matching training losses (docs/design.md, "Diffusion training"), returning dicts of named terms.

* :class:`LightningDiTLoss`: ``x_t = t·x + (1−t)·ε`` (t = 1 is data), target ``u = x − ε``;
  ``mse`` = mean over C,H,W of ``(v − u)²``; ``cos`` = ``1 − cos(v, u)`` over the channel
  dimension at each position, averaged over positions; ``total = mse.mean() + cos_weight·cos.mean()``
  (VFM-VAE's LightningDiT ``train.py``).
* :class:`REGLoss`: ``x_t = (1−t)·x + t·ε`` (t = 1 is noise), target ``ε − x`` for the latent
  and for the DINOv2 class token; ``total = mse + proj_weight·proj + cls_weight·cls_mse``
  with the REPA projection loss ``proj`` = mean over encoders, samples and tokens of
  ``−cos(z, z̃)`` (weights 0.5 and 0.03; VFM-VAE ``tools/preprocess_for_reg/loss.py``).

Both are written against callables, never a network: the LightningDiT loss takes a velocity
function ``v(x_t, t, y)``; the REG loss takes ``fn(x_t, t, y, cls_t) -> (v, zs_tilde, cls_v)``,
the official SiT-REG output triple. ``t`` and the noise may be passed explicitly (fixtures,
tests); otherwise they are drawn from the :class:`TimestepSampler` and ``torch.randn`` in the
official order (LightningDiT: noise then t; REG: t, noise, class-token noise), so with the
global RNG and the official seed the uniform draws coincide with the official ones.
Loss reductions run in (at least) float32 whatever the network's dtype (docs/design.md, "Precision policy").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .paths import LinearPath, TimeConvention
from .timesteps import TimestepSampler


def _f32(x: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 network outputs are upcast, float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every non-batch dimension: ``(B, ...) -> (B,)``."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def channel_cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``(B,)``: ``1 − cos(target, pred)`` along dim 1 (channels), averaged over positions."""
    return mean_flat(1 - F.cosine_similarity(target, pred, dim=1))


def projection_loss(zs: Sequence[Tensor], zs_tilde: Sequence[Tensor]) -> Tensor:
    """REPA/REG projection loss (scalar): mean over encoders, samples and tokens of ``−cos``.

    ``zs[i]``, ``zs_tilde[i]``: ``(B, N, D)`` target features and projector outputs.
    """
    if len(zs) == 0 or len(zs) != len(zs_tilde):
        raise ValueError(
            f"need one projector output per target feature, got {len(zs)} targets and {len(zs_tilde)} outputs"
        )
    terms = []
    for z, z_tilde in zip(zs, zs_tilde):
        if z.shape != z_tilde.shape:
            raise ValueError(f"projection target {tuple(z.shape)} and output {tuple(z_tilde.shape)} differ in shape")
        cos = (F.normalize(_f32(z), dim=-1) * F.normalize(_f32(z_tilde), dim=-1)).sum(dim=-1)
        terms.append(-cos.mean(dim=-1))  # (B,): mean over tokens
    return torch.stack(terms).mean()


def _draw(x: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is None:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match data shape {tuple(x.shape)}")
    return noise


def _times(sampler: TimestepSampler, x: Tensor, t: Tensor | None, step: int, generator) -> Tensor:
    if t is None:
        return sampler.sample(x.shape[0], step=step, generator=generator, device=x.device, dtype=x.dtype)
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t.to(x.dtype)


class LightningDiTLoss:
    """Velocity MSE + channel-cosine loss on the data-at-one linear path.

    ``__call__(velocity_fn, x_data (B, C, h, w), y (B,), *, t=None, noise=None, step=0,
    generator=None, return_details=False)`` returns ``{"total", "mse", "cos"}`` (scalars);
    with ``return_details`` also a dict of ``t``, ``noise``, ``x_t``, ``target``, ``pred``,
    ``mse_per_sample``, ``cos_per_sample``.
    """

    def __init__(
        self,
        timestep_sampler: TimestepSampler | None = None,
        cos_weight: float = 1.0,
        convention: TimeConvention | str = TimeConvention.DATA_AT_ONE,
    ):
        self.path = LinearPath(convention)
        self.timestep_sampler = timestep_sampler or TimestepSampler("logit_normal")
        if cos_weight < 0:
            raise ValueError(f"cos_weight must be >= 0, got {cos_weight}")
        self.cos_weight = cos_weight

    def __call__(
        self,
        velocity_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        x_data: Tensor,
        y: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
        return_details: bool = False,
    ):
        # Draw order as LightningDiT's Transport.sample (noise, then t); REG draws t first.
        noise = _draw(x_data, noise, generator)
        t = _times(self.timestep_sampler, x_data, t, step, generator)
        x_t = self.path.interpolate(x_data, noise, t)
        target = self.path.velocity_target(x_data, noise)
        pred = velocity_fn(x_t, t, y)
        if pred.shape != target.shape:
            raise ValueError(
                f"velocity shape {tuple(pred.shape)} does not match the latent shape {tuple(target.shape)}"
            )
        pred32, target32 = _f32(pred), _f32(target)
        mse = mean_flat((pred32 - target32) ** 2)
        cos = channel_cosine_loss(pred32, target32)
        terms = {"mse": mse.mean(), "cos": cos.mean()}
        terms["total"] = terms["mse"] + self.cos_weight * terms["cos"] if self.cos_weight else terms["mse"]
        if not return_details:
            return terms
        details = {
            "t": t,
            "noise": noise,
            "x_t": x_t,
            "target": target,
            "pred": pred,
            "mse_per_sample": mse,
            "cos_per_sample": cos,
        }
        return terms, details


class REGLoss:
    """REG loss: velocity MSE + weighted projection loss + weighted class-token MSE.

    ``__call__(fn, x_data (B, C, h, w), cls_data (B, D), y (B,), zs (list of (B, N, D)), *,
    t=None, noise=None, cls_noise=None, step=0, generator=None, return_details=False)``
    returns ``{"total", "mse", "proj", "cls_mse"}`` (``proj`` and ``cls_mse`` unweighted).
    """

    def __init__(
        self,
        timestep_sampler: TimestepSampler | None = None,
        proj_weight: float = 0.5,
        cls_weight: float = 0.03,
        convention: TimeConvention | str = TimeConvention.NOISE_AT_ONE,
    ):
        self.path = LinearPath(convention)
        self.timestep_sampler = timestep_sampler or TimestepSampler("uniform")
        if proj_weight < 0 or cls_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got proj_weight={proj_weight}, cls_weight={cls_weight}")
        self.proj_weight = proj_weight
        self.cls_weight = cls_weight

    def __call__(
        self,
        fn: Callable[..., tuple],
        x_data: Tensor,
        cls_data: Tensor,
        y: Tensor,
        zs: Sequence[Tensor],
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        cls_noise: Tensor | None = None,
        step: int = 0,
        generator: torch.Generator | None = None,
        return_details: bool = False,
    ):
        if cls_data.shape[0] != x_data.shape[0]:
            raise ValueError(f"class token batch {cls_data.shape[0]} differs from latent batch {x_data.shape[0]}")
        t = _times(self.timestep_sampler, x_data, t, step, generator)
        noise = _draw(x_data, noise, generator)
        cls_noise = _draw(cls_data, cls_noise, generator)
        x_t = self.path.interpolate(x_data, noise, t)
        cls_t = self.path.interpolate(cls_data, cls_noise, t)
        target = self.path.velocity_target(x_data, noise)
        cls_target = self.path.velocity_target(cls_data, cls_noise)
        pred, zs_tilde, cls_pred = fn(x_t, t, y, cls_t)
        if pred.shape != target.shape or cls_pred.shape != cls_target.shape:
            raise ValueError(
                f"REG outputs {tuple(pred.shape)}/{tuple(cls_pred.shape)} do not match "
                f"targets {tuple(target.shape)}/{tuple(cls_target.shape)}"
            )
        mse = mean_flat((_f32(pred) - _f32(target)) ** 2)
        cls_mse = mean_flat((_f32(cls_pred) - _f32(cls_target)) ** 2)
        proj = projection_loss(zs, zs_tilde)
        terms = {"mse": mse.mean(), "proj": proj, "cls_mse": cls_mse.mean()}
        terms["total"] = terms["mse"] + self.proj_weight * proj + self.cls_weight * terms["cls_mse"]
        if not return_details:
            return terms
        details = {
            "t": t,
            "noise": noise,
            "cls_noise": cls_noise,
            "x_t": x_t,
            "cls_t": cls_t,
            "target": target,
            "cls_target": cls_target,
            "pred": pred,
            "cls_pred": cls_pred,
            "mse_per_sample": mse,
            "cls_mse_per_sample": cls_mse,
        }
        return terms, details
