"""Distributed helpers for modules that reduce gradients and save per-rank state themselves (plain PyTorch).

The tokenizer's GAN step takes two backward passes per training step, so DDP's reducer stays idle and
the module averages the gradients of exactly the stepped parameters with one flat all-reduce, as the
official training loop does (docs/design.md, "Tokenizer stages and losses"). Its per-rank random
streams are gathered into the checkpoint with `gather_from_ranks` (docs/design.md, "Checkpoints,
resume and provenance").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def all_reduce_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Average the gradients of `params` over ranks with one flat all-reduce (official `training_loop`).

    Parameters without a gradient on this rank contribute zeros, so every rank steps the same set.
    Afterwards every gradient goes through `nan_to_num(nan=0, +-inf=+-1e5)`, as the official loop.
    """
    if not params:
        return
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the present gradients (0 when there are none), fp32."""
    grads = [p.grad.detach().float() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def gather_from_ranks(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``: a collective when a process group of several ranks is up
    (call it on every rank, as Lightning calls ``on_save_checkpoint``), else ``[obj]``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


__all__ = ["all_reduce_gradients", "gather_from_ranks", "grad_norm"]
