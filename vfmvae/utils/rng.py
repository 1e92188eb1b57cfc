"""One checkpointable RNG stream per rank for the random draws of a training step (plain PyTorch).

Used by the tokenizer and the diffusion modules alike: the step's randomness (posterior sampling,
DiffAugment, discriminator crops, diffusion times, noise, label dropout) runs on a generator state the
module owns and saves in its checkpoints, so a resumed run draws exactly what an uninterrupted one would
(docs/design.md, "Checkpoints, resume and provenance").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)


class RankRNGStream:
    """A private, checkpointable torch RNG stream per rank (CPU + the current CUDA device).

    Training steps run inside :meth:`activate` (``torch.random.fork_rng``), so what they draw
    (diffusion times, noise, label dropout) depends only on this stream: not on DataLoader iterator
    creation, sanity validation or callbacks, which all consume the global RNG at points a resumed
    run cannot replay. Seeded ``seed * world_size + rank`` (the official per-rank seeding) when the
    rank is bound; :meth:`state_dict` gathers every rank's state (a collective: call it on all ranks,
    as Lightning does when it dumps a checkpoint), so a resumed run continues each rank's own stream.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.rank, self.world_size = 0, 1
        self.cpu_state = torch.Generator().manual_seed(self.seed).get_state()
        self.cuda_state: torch.Tensor | None = None
        self._pending: Mapping[str, Any] | None = None
        self._bound = False

    def _reseed(self, seed: int) -> None:
        self.cpu_state = torch.Generator().manual_seed(int(seed)).get_state()
        self.cuda_state = None

    def bind(self, rank: int, world_size: int) -> None:
        """Fix this process's rank (call in ``setup``); seeds the stream unless a checkpoint restored it."""
        self.rank, self.world_size, self._bound = int(rank), int(world_size), True
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None
        else:
            self._reseed(self.seed * self.world_size + self.rank)

    @contextlib.contextmanager
    def activate(self, device: torch.device) -> Iterator[None]:
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self.cpu_state)
            if cuda:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(self.seed * self.world_size + self.rank)
                else:
                    torch.cuda.set_rng_state(self.cuda_state, device)
            yield
            self.cpu_state = torch.get_rng_state()
            if cuda:
                self.cuda_state = torch.cuda.get_rng_state(device)

    def _own_state(self) -> dict[str, Any]:
        return {"cpu": self.cpu_state.clone(), "cuda": None if self.cuda_state is None else self.cuda_state.clone()}

    def state_dict(self) -> dict[str, Any]:
        states = [self._own_state()]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, self._own_state())
        return {"seed": self.seed, "world_size": len(states), "ranks": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = int(state["seed"])
        if self._bound:  # Lightning restores after setup(): the rank is known
            self._apply(state)
        else:  # applied in bind(), when the rank is known
            self._pending = state

    def _apply(self, state: Mapping[str, Any]) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.world_size:
            # Another world size: the streams cannot continue; start fresh, distinct ones (documented).
            log.warning(
                "RNG streams were saved by %d ranks, this run has %d: reseeding (resume is not bitwise)",
                len(ranks),
                self.world_size,
            )
            self._reseed((self.seed * 1_000_003 + len(ranks)) * self.world_size + self.rank)
            return
        own = ranks[self.rank]
        self.cpu_state = own["cpu"].clone()
        self.cuda_state = None if own.get("cuda") is None else own["cuda"].clone()


__all__ = ["RankRNGStream"]
