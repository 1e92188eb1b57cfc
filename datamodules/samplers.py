"""Resumable, distributed-aware sampler for map-style datasets (docs/design.md, "Checkpoints, resume and provenance").

Order of one epoch: a permutation of ``range(len(dataset))`` drawn from a generator seeded
with ``seed + epoch`` (identical on every rank), padded by wrapping around (or truncated when
``drop_last``) to a multiple of ``num_replicas``, then dealt out round-robin: rank ``r`` takes
global positions ``r, r + R, r + 2R, ...``. The first ``k`` samples of every rank are therefore
exactly the first ``k * R`` entries of the global order, which is what makes the state
portable: ``position`` (samples consumed *per rank*) plus ``num_replicas`` says how much of the
global order is used up, and a resume continues with the remaining global order, even on a
different number of ranks.

The sampler cannot count consumption itself (DataLoader workers prefetch ahead), so whoever
knows how many batches were trained on sets it: ``callbacks/sampler_state.py`` does that for
Lightning; a plain loop calls :meth:`set_position` before saving.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(DistributedSampler):
    """Like ``torch.utils.data.DistributedSampler``, plus mid-epoch ``state_dict``/``load_state_dict``.

    It subclasses ``DistributedSampler`` (without using its ``__init__``, which needs an
    initialised process group) so that Lightning's ``use_distributed_sampler`` recognises it
    and does not wrap it in another distributed sampler.

    Args:
        dataset: a sized (map-style) dataset.
        num_replicas / rank: default to the initialised process group, else 1 / 0.
        shuffle: permute each epoch (deterministically from ``seed + epoch``).
        seed: base seed, identical on all ranks.
        drop_last: drop the tail so every rank gets the same number of distinct samples;
            otherwise the tail is padded with samples from the start (as DistributedSampler).

    Iterating yields this rank's indices of the current epoch starting at ``position``; after
    a resume the first epoch is therefore shorter (:meth:`remaining`; ``len()`` stays the full
    epoch, as Lightning expects), and the next ``set_epoch`` with a new epoch resets
    ``position`` to 0.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        Sampler.__init__(self)
        if not hasattr(dataset, "__len__"):
            raise TypeError("ResumableDistributedSampler needs a map-style dataset with __len__")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas - 1}] (num_replicas={num_replicas})")
        self.dataset = dataset
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        self.position = 0  # samples of this epoch already consumed, per rank
        if self.num_samples == 0:
            raise ValueError(
                f"dataset of {len(dataset)} samples gives no sample per rank with num_replicas={num_replicas}"
                + (" and drop_last=True" if drop_last else "")
            )

    # ------------------------------------------------------------------ order
    @property
    def num_samples(self) -> int:
        """Samples per rank in a full epoch."""
        n, r = len(self.dataset), self.num_replicas
        return n // r if self.drop_last else math.ceil(n / r)

    @property
    def total_size(self) -> int:
        """Global samples per epoch after padding / dropping (as ``DistributedSampler``)."""
        return self.num_samples * self.num_replicas

    def _global_order(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = self.num_samples * self.num_replicas
        if total > n:  # pad by wrapping around (possibly more than once for tiny datasets)
            order = (order * math.ceil(total / n))[:total]
        return order[:total]

    def rank_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full list of indices for ``epoch`` (default: current), ignoring position."""
        saved = self.epoch
        if epoch is not None:
            self.epoch = int(epoch)
        try:
            return self._global_order()[self.rank :: self.num_replicas]
        finally:
            self.epoch = saved

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.position :])

    def __len__(self) -> int:
        # The full epoch, also right after a mid-epoch resume: Lightning adds the restored batch
        # count to what the iterator yields and compares the sum with len(dataloader).
        return self.num_samples

    def remaining(self) -> int:
        """Samples this rank will still yield in the current epoch (``len(self) - position``)."""
        return self.num_samples - self.position

    # ------------------------------------------------------------------ position
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a *different* epoch starts from position 0, the same keeps it
        (Lightning calls ``set_epoch`` again on the resumed epoch)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def set_position(self, position: int) -> None:
        """Samples of the current epoch consumed by this rank (0 <= position <= num_samples)."""
        if not 0 <= int(position) <= self.num_samples:
            raise ValueError(f"position {position} outside [0, {self.num_samples}] for this epoch")
        self.position = int(position)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_replicas": self.num_replicas,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "dataset_len": len(self.dataset),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore epoch and position; a different ``num_replicas`` is converted through the
        global order (``position * old_R`` samples are used up globally)."""
        for key in ("epoch", "position"):
            if key not in state:
                raise KeyError(f"sampler state lacks {key!r}")
        for key, mine in (
            ("seed", self.seed),
            ("shuffle", self.shuffle),
            ("drop_last", self.drop_last),
            ("dataset_len", len(self.dataset)),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has {mine!r}; "
                    "resuming would not continue the same order"
                )
        self.epoch = int(state["epoch"])
        old_r = int(state.get("num_replicas", self.num_replicas))
        consumed_global = int(state["position"]) * old_r
        if old_r != self.num_replicas and consumed_global % self.num_replicas:
            raise ValueError(
                f"cannot resume {consumed_global} globally consumed samples on {self.num_replicas} ranks "
                "without duplicating or skipping samples (not divisible)"
            )
        self.set_position(consumed_global // self.num_replicas)
