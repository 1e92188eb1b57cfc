"""LARS and the warm-up + half-cosine learning-rate schedule of MAE's linear probe (docs/analyses.md, "Linear probe").

LARS (layer-wise adaptive rate scaling): for every parameter with more than one dimension, weight decay is
added to the gradient and the update is rescaled by ``trust_coefficient * ||w|| / ||update||``; biases and
other 1-d parameters get plain momentum SGD. This is the optimiser MAE's linear probe uses with a large batch.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LARS", "warmup_cosine_lr"]


class LARS(torch.optim.Optimizer):
    """``LARS(params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001)``."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):  # fmt: skip
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:  # weights only: biases are neither decayed nor rescaled
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(w_norm)
                    trust = torch.where(
                        w_norm > 0, torch.where(u_norm > 0, group["trust_coefficient"] * w_norm / u_norm, one), one
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def warmup_cosine_lr(epoch: float, base_lr: float, epochs: float, warmup_epochs: float, min_lr: float = 0.0) -> float:
    """Learning rate at a fractional ``epoch`` (set every iteration): linear warm-up from 0 over ``warmup_epochs``,
    then a half cosine from ``base_lr`` down to ``min_lr`` at ``epochs``."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
