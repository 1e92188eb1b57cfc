"""Shared training utilities (plain PyTorch): EMA, non-finite guard, atomic checkpoint writing."""

from vfmvae.utils.checkpoint_io import atomic_open, atomic_save, atomic_write
from vfmvae.utils.ema import EMA, EMA_PRESETS, EMAConfig, ema_beta
from vfmvae.utils.guard import NonFiniteGuard, NonFiniteLossError, non_finite_rule

__all__ = [
    "EMA",
    "EMA_PRESETS",
    "EMAConfig",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "atomic_open",
    "atomic_save",
    "atomic_write",
    "ema_beta",
    "non_finite_rule",
]
