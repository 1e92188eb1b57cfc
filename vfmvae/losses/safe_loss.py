"""The tokenizer's safe-loss rule (docs/design.md, "Tokenizer stages and losses"), as a pure function over named terms.

The generic per-step guard (`vfmvae.utils.guard`) owns the mechanics (max-reduce of the flag over
ranks, backpropagating `nan_to_num(loss) * 0` on an unsafe step, logging `Loss/{G,D}/skipped`);
this module only decides, from plain floats, whether a step is safe and which terms are not.

Rule (official `training/loss.py`), checked only once `run_nimg > 50_000` (images of *this* run,
counted from the resume point):
- G: ratio-checked terms (L1, L2, LPIPS, SSIM, multi-scale L1) are unsafe when non-finite or
  `> 10 x` their value at the previous *safe* step (if that was `> 1e-6`; with no previous safe
  step, only finiteness counts). GAN and feature-matching terms: unsafe only when non-finite.
- D: every active D term is unsafe when non-finite or `|value| > 1e4`.
Terms not named in the rule (KL, VF, totals) are never checked, as in the official code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# Names follow the keys our loss callables return.
G_RATIO_CHECKED: tuple[str, ...] = ("l1", "l2", "lpips", "ssim", "multiscale_l1")
G_FINITE_CHECKED: tuple[str, ...] = ("g_hinge", "g_lsgan", "feature_matching")
D_CHECKED: tuple[str, ...] = (
    "d_hinge",
    "d_hinge_real",
    "d_hinge_fake",
    "d_lsgan",
    "d_lsgan_real",
    "d_lsgan_fake",
)


@dataclass(frozen=True)
class SafeLossConfig:
    """Thresholds of the rule (official constants)."""

    start_nimg: int = 50_000
    ratio_limit: float = 10.0
    ratio_floor: float = 1e-6
    d_abs_limit: float = 1e4


@dataclass(frozen=True)
class SafeLossDecision:
    """Outcome for one step: `safe` and the names of the offending terms (empty when safe)."""

    safe: bool
    unsafe_terms: tuple[str, ...] = ()


def _as_float(value: float | torch.Tensor) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"safe-loss terms must be scalars, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().float().item())
    return float(value)


def check_generator_terms(
    terms: Mapping[str, float | torch.Tensor],
    prev_safe_terms: Mapping[str, float] | None,
    run_nimg: int,
    config: SafeLossConfig = SafeLossConfig(),
) -> SafeLossDecision:
    """Generator-phase decision. `prev_safe_terms` are the values at the last safe G step (or None).

    After a safe decision the caller stores `{k: float(v) for k, v in terms.items()}` as the new
    `prev_safe_terms`; after an unsafe one it keeps the old values.
    """
    if run_nimg <= config.start_nimg:
        return SafeLossDecision(True)
    unsafe: list[str] = []
    for name in G_RATIO_CHECKED + G_FINITE_CHECKED:
        if name not in terms:
            continue
        value = _as_float(terms[name])
        if not math.isfinite(value):
            unsafe.append(name)
            continue
        if name in G_RATIO_CHECKED and prev_safe_terms is not None and name in prev_safe_terms:
            prev = float(prev_safe_terms[name])
            if prev > config.ratio_floor and value > config.ratio_limit * prev:
                unsafe.append(name)
    return SafeLossDecision(not unsafe, tuple(unsafe))


def check_discriminator_terms(
    terms: Mapping[str, float | torch.Tensor],
    run_nimg: int,
    config: SafeLossConfig = SafeLossConfig(),
) -> SafeLossDecision:
    """Discriminator-phase decision: any named D term non-finite or `|value| > 1e4` is unsafe."""
    if run_nimg <= config.start_nimg:
        return SafeLossDecision(True)
    unsafe = []
    for name in D_CHECKED:
        if name not in terms:
            continue
        value = _as_float(terms[name])
        if not math.isfinite(value) or abs(value) > config.d_abs_limit:
            unsafe.append(name)
    return SafeLossDecision(not unsafe, tuple(unsafe))


def safe_loss_rule(
    phase: str,
    terms: Mapping[str, float | torch.Tensor],
    run_nimg: int,
    prev_safe_terms: Mapping[str, float] | None = None,
    config: SafeLossConfig = SafeLossConfig(),
) -> SafeLossDecision:
    """Dispatch on `phase` ("G" or "D"); the single entry point the guard calls."""
    if phase == "G":
        return check_generator_terms(terms, prev_safe_terms, run_nimg, config)
    if phase == "D":
        return check_discriminator_terms(terms, run_nimg, config)
    raise ValueError(f"safe_loss_rule: phase must be 'G' or 'D', got {phase!r}")


class TokenizerSafeLossRule:
    """Stateful adapter of `safe_loss_rule` to the guard's rule protocol (`vfmvae.utils.guard.NonFiniteGuard(rule=...)`).

    `rule(terms) -> unsafe names`; the guard calls `accept(terms)` after every step all ranks took,
    which records the reference values for the 10x test. The caller advances the per-run image
    counter with `set_run_nimg(n)` before each check. Checkpointable (`state_dict`).
    """

    def __init__(self, phase: str, config: SafeLossConfig = SafeLossConfig()):
        if phase not in ("G", "D"):
            raise ValueError(f"TokenizerSafeLossRule: phase must be 'G' or 'D', got {phase!r}")
        self.phase = phase
        self.config = config
        self.run_nimg = 0
        self.prev_safe_terms: dict[str, float] | None = None

    def set_run_nimg(self, run_nimg: int) -> None:
        self.run_nimg = int(run_nimg)

    def __call__(self, terms: Mapping[str, float]) -> list[str]:
        decision = safe_loss_rule(self.phase, terms, self.run_nimg, self.prev_safe_terms, self.config)
        return list(decision.unsafe_terms)

    def accept(self, terms: Mapping[str, float]) -> None:
        if self.phase == "G":
            self.prev_safe_terms = {k: _as_float(v) for k, v in terms.items() if k in G_RATIO_CHECKED}

    def state_dict(self) -> dict:
        return {"run_nimg": self.run_nimg, "prev_safe_terms": self.prev_safe_terms}

    def load_state_dict(self, state: Mapping) -> None:
        self.run_nimg = int(state["run_nimg"])
        prev = state["prev_safe_terms"]
        self.prev_safe_terms = None if prev is None else {str(k): float(v) for k, v in prev.items()}
