"""Equivariance regularisation (docs/design.md, "Tokenizer stages and losses"): sampler and the three tensor transforms.

One draw per forward call (the whole micro-batch shares it; D and G phases draw independently):

- "latent" branch, probability `p_latent = 0.5` (official `is_eq_prior=False`): scale
  s ~ U{0.25, 0.5, 0.75, 1.0} **and** rotation k ~ U{0, 1, 2, 3} (k * 90 deg). The encoder sees
  the original image; the sampled z is bilinearly resized by s (align_corners False, no
  antialias) and then `rot90(k, dims=(-1, -2))`.
- "input" branch, probability 0.5 (official `is_eq_prior=True`): with probability
  `p_input_scale = 0.25` s ~ U{0.25, 0.5, 0.75}, else s = 1; no rotation. The *image* is
  downscaled by s (bilinear, antialias) before the VFM's own x2 resize.
- In both branches the ground truth gets the same transform (resize by s with the VFM's
  interpolation, antialias when shrinking, then `rot90(k)`); KL and VF use the untransformed z.

P(no transform) = 0.5 * 1/16 + 0.5 * 0.75 = 0.40625 with the default sets.

Scale sets are configurable and validated against the training resolution: the decoder's
latent-fusion adapters unshuffle the latent by 4 (block 0) and 2 (block 1), so every latent side
produced by a scale must be an integer multiple of `latent_multiple` (4). At 256 px every
official scale is valid; at 128 px only 0.5 and 1; at 64 px only 1.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F

BRANCH_NONE = "none"  # validation / EQ off: identity
BRANCH_LATENT = "latent"  # official is_eq_prior=False
BRANCH_INPUT = "input"  # official is_eq_prior=True


@dataclass
class EquivarianceConfig:
    """Probabilities and scale/rotation sets of the equivariance regulariser."""

    enabled: bool = True
    p_latent: float = 0.5
    p_input_scale: float = 0.25
    latent_scales: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    input_scales: tuple[float, ...] = (0.25, 0.5, 0.75)
    rotations: tuple[int, ...] = (0, 1, 2, 3)
    interpolation: str = "bilinear"  # the VFM's interpolation (SigLIP: bilinear)


EQUIVARIANCE_PRESETS: dict[str, EquivarianceConfig] = {
    "paper-256": EquivarianceConfig(),
    # 512 px (32x32 latent): the same official sets, every scale valid (latent sides 8, 16, 24, 32).
    "paper-512": EquivarianceConfig(),
    # 128 px: 0.25 and 0.75 give 2x2 / 6x6 latents the fusion adapters cannot take.
    "res-128": EquivarianceConfig(latent_scales=(0.5, 1.0), input_scales=(0.5,)),
    # 64 px (4x4 latent): only rotations and the identity scale are possible.
    "debug": EquivarianceConfig(latent_scales=(1.0,), input_scales=()),
    "off": EquivarianceConfig(enabled=False),
}


@dataclass(frozen=True)
class EquivarianceSample:
    """One draw: which branch, the scale s and the number k of 90-degree rotations."""

    branch: str = BRANCH_NONE
    scale: float = 1.0
    rot_k: int = 0

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.rot_k % 4 == 0


def _scaled_side(side: int, scale: float) -> Fraction:
    return Fraction(side) * Fraction(scale).limit_denominator(1000)


def validate_scales(
    config: EquivarianceConfig, resolution: int, compression: int = 16, latent_multiple: int = 4
) -> None:
    """Refuse scale sets that give latent sizes the decoder cannot take at `resolution` px.

    A scale s is valid when `resolution * s / compression` is an integer divisible by
    `latent_multiple` (latent branch: the resized z; input branch: the token grid of the
    downscaled image). Raises `ValueError` naming the bad scales and the valid subset.
    """
    if resolution % compression != 0:
        raise ValueError(
            f"resolution {resolution} is not a multiple of the tokenizer's compression factor {compression}"
        )
    for name, p in (("p_latent", config.p_latent), ("p_input_scale", config.p_input_scale)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"equivariance {name}={p} is not a probability")
    if not config.enabled:
        return
    if not config.latent_scales:
        raise ValueError("equivariance latent_scales is empty (use (1.0,) for rotation only)")
    if any(k not in (0, 1, 2, 3) for k in config.rotations) or not config.rotations:
        raise ValueError(f"equivariance rotations must be a non-empty subset of (0, 1, 2, 3), got {config.rotations}")
    latent_side = resolution // compression

    def fits(s: float) -> bool:
        side = _scaled_side(latent_side, s)
        return 0.0 < s <= 1.0 and side.denominator == 1 and side.numerator % latent_multiple == 0

    bad: list[str] = []
    for branch, scales in (("latent", config.latent_scales), ("input", config.input_scales)):
        for s in scales:
            if not fits(s):
                bad.append(f"{branch} scale {s} -> latent side {float(_scaled_side(latent_side, s)):g}")
    if bad:
        valid = [s for s in (0.25, 0.5, 0.75, 1.0) if fits(s)]
        raise ValueError(
            f"equivariance scales invalid at {resolution} px (latent {latent_side}x{latent_side}; the latent-fusion "
            f"adapters need sides that are multiples of {latent_multiple}): {', '.join(bad)}. "
            f"Valid scales here: {valid}; choose a subset in the config (e.g. preset 'res-128' or 'debug')."
        )


class EquivarianceSampler:
    """Draws `EquivarianceSample`s with its own seeded `random.Random` (checkpointable state).

    Use one sampler per rank with seed `seed * world_size + rank` (official per-rank seeding).
    """

    def __init__(self, config: EquivarianceConfig, resolution: int, seed: int = 0, latent_multiple: int = 4):
        validate_scales(config, resolution, latent_multiple=latent_multiple)
        self.config = config
        self.resolution = resolution
        self.rng = random.Random(seed)

    def sample(self, training: bool = True) -> EquivarianceSample:
        """One draw for the whole micro-batch; identity when EQ is off or not training."""
        cfg = self.config
        if not cfg.enabled or not training:
            return EquivarianceSample()
        if self.rng.random() < cfg.p_latent:
            return EquivarianceSample(
                BRANCH_LATENT, float(self.rng.choice(cfg.latent_scales)), int(self.rng.choice(cfg.rotations))
            )
        if cfg.input_scales and self.rng.random() < cfg.p_input_scale:
            return EquivarianceSample(BRANCH_INPUT, float(self.rng.choice(cfg.input_scales)), 0)
        return EquivarianceSample(BRANCH_INPUT, 1.0, 0)

    def state_dict(self) -> dict:
        return {"rng_state": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng_state"])


def _scaled_size(x: torch.Tensor, scale: float) -> tuple[int, int]:
    h, w = x.shape[-2:]
    hs, ws = _scaled_side(h, scale), _scaled_side(w, scale)
    if hs.denominator != 1 or ws.denominator != 1 or hs <= 0 or ws <= 0:
        raise ValueError(f"scale {scale} does not map a {h}x{w} tensor to an integer size")
    return int(hs), int(ws)


def _resize(x: torch.Tensor, scale: float, mode: str, antialias: bool) -> torch.Tensor:
    kwargs: dict = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs.update(align_corners=False, antialias=antialias and scale < 1.0)
    return F.interpolate(x, size=_scaled_size(x, scale), **kwargs)


def transform_latent(z: torch.Tensor, sample: EquivarianceSample) -> torch.Tensor:
    """Latent branch on the sampled z `(B, C, h, w)`: bilinear resize by s (no antialias), then rot90(k)."""
    if sample.branch != BRANCH_LATENT or sample.is_identity:
        return z
    if sample.scale != 1.0:
        z = _resize(z, sample.scale, "bilinear", antialias=False)
    return torch.rot90(z, k=sample.rot_k, dims=(-1, -2)) if sample.rot_k % 4 else z


def transform_input(img: torch.Tensor, sample: EquivarianceSample) -> torch.Tensor:
    """Input branch on the encoder's image `(B, 3, H, W)` in [0, 1]: bilinear antialiased downscale by s."""
    if sample.branch != BRANCH_INPUT or sample.scale == 1.0:
        return img
    return _resize(img, sample.scale, "bilinear", antialias=True)


def transform_target(img: torch.Tensor, sample: EquivarianceSample, interpolation: str = "bilinear") -> torch.Tensor:
    """Ground truth `(B, 3, H, W)`, either branch: resize by s (antialias when shrinking), then rot90(k)."""
    if sample.is_identity:
        return img
    if sample.scale != 1.0:
        img = _resize(img, sample.scale, interpolation, antialias=True)
    return torch.rot90(img, k=sample.rot_k, dims=(-1, -2)) if sample.rot_k % 4 else img


__all__ = [
    "BRANCH_INPUT",
    "BRANCH_LATENT",
    "BRANCH_NONE",
    "EQUIVARIANCE_PRESETS",
    "EquivarianceConfig",
    "EquivarianceSample",
    "EquivarianceSampler",
    "transform_input",
    "transform_latent",
    "transform_target",
    "validate_scales",
]
