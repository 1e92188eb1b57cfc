"""Condition types of the diffusion networks (docs/design.md, "Diffusion networks and the network interface").

`ClassLabels` is the ImageNet class condition of LightningDiT and REG SiT: class ids ``(B,)`` int64 in
``[0, num_classes)``, with ``null_id`` (1000, the extra row of the label table) as the unconditional
value of classifier-free guidance. A text-conditioned network brings its own spec (embeddings
``(B, L, D)``, a null embedding) implementing `vfmvae.dit.interface.ConditionSpec`; samplers, guidance,
callbacks and scripts only call the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassLabels", "class_labels", "LABEL_MODES"]

LABEL_MODES = ("random", "balanced")


def class_labels(
    mode: str, n: int, num_classes: int, *, offset: int = 0, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` class ids: ``"random"`` = ``randint(0, num_classes)`` (the paper's protocol) or
    ``"balanced"`` = ``(offset + i) % num_classes`` (equal counts when the total is a multiple)."""
    if mode == "random":
        return torch.randint(0, num_classes, (n,), generator=generator)
    if mode == "balanced":
        return (torch.arange(n) + offset) % num_classes
    raise ValueError(f"unknown label mode {mode!r}; choose one of {LABEL_MODES}")


@dataclass(frozen=True)
class ClassLabels:
    """Class-id condition ``(B,)`` int64; ``null_id`` is the CFG null class (a row of the label table)."""

    num_classes: int = 1000
    null_id: int = 1000
    batch_key: str = "label"

    def from_batch(self, batch: Mapping[str, Any]) -> Tensor:
        if self.batch_key not in batch:
            raise KeyError(f"the batch has no {self.batch_key!r} entry (class ids (B,)); keys: {sorted(batch)}")
        return batch[self.batch_key]

    def null(self, n: int, device: torch.device | str) -> Tensor:
        return torch.full((n,), self.null_id, dtype=torch.long, device=device)

    def null_like(self, condition: Tensor) -> Tensor:
        return torch.full_like(condition, self.null_id)

    def draw(self, mode: str, n: int, *, offset: int = 0, generator: torch.Generator | None = None) -> Tensor:
        return class_labels(mode, n, self.num_classes, offset=offset, generator=generator)
