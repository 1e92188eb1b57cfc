"""Named linear-probe protocols: optimiser, learning rate, schedule, epochs (docs/analyses.md, "Linear probe").

``"mae"`` is the paper-scale default: MAE's linear probe (LARS, momentum 0.9, no weight decay, base lr 0.1 per
256 images, global batch 16,384, 90 epochs with 10 warm-up epochs, half-cosine decay, horizontal flips).
``"demo"`` is the same recipe scaled to the demo data (a few hundred latents: SGD with momentum, a batch of
32, more epochs so that the schedule sees enough steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["ProbeProtocol", "PROBE_PROTOCOLS", "probe_protocol"]


@dataclass(frozen=True)
class ProbeProtocol:
    """Fields:
    optimizer: ``"lars"`` or ``"sgd"`` (momentum SGD, weight decay on every parameter).
    base_lr: learning rate per 256 images; the run's peak lr is ``base_lr * global_batch_size / 256``.
    global_batch_size: images per optimiser step over all processes.
    epochs, warmup_epochs: schedule length, in passes over the training latents.
    weight_decay, momentum, min_lr: as named.
    augmentation: ``"flip"`` (the cached horizontal flip with p = 0.5) or ``"none"``.
    normalization: ``"batchnorm"`` (parameter-free) or ``"none"``.
    """

    optimizer: str = "lars"
    base_lr: float = 0.1
    global_batch_size: int = 16384
    epochs: int = 90
    warmup_epochs: int = 10
    weight_decay: float = 0.0
    momentum: float = 0.9
    min_lr: float = 0.0
    augmentation: str = "flip"
    normalization: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.optimizer not in ("lars", "sgd"):
            raise ValueError(f"unknown probe optimizer {self.optimizer!r}; choose 'lars' or 'sgd'")
        if self.augmentation not in ("flip", "none"):
            raise ValueError(f"unknown probe augmentation {self.augmentation!r}; choose 'flip' or 'none'")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be in [0, epochs={self.epochs})")

    def peak_lr(self) -> float:
        return self.base_lr * self.global_batch_size / 256


PROBE_PROTOCOLS: dict[str, ProbeProtocol] = {
    "mae": ProbeProtocol(),
    "demo": ProbeProtocol(optimizer="sgd", base_lr=0.8, global_batch_size=32, epochs=30, warmup_epochs=3),
}


def probe_protocol(name: str, **overrides) -> ProbeProtocol:
    if name not in PROBE_PROTOCOLS:
        raise KeyError(f"unknown linear-probe protocol {name!r}; known: {sorted(PROBE_PROTOCOLS)}")
    return dataclasses.replace(PROBE_PROTOCOLS[name], **overrides)
