"""What a benchmark measures: a zero-argument step plus how many images and FLOPs one step is.

Every builder (`dit_step`, `tokenizer_step`, `sampling`, `latent_cache`, `cknna_bench`) returns a
`Workload`; `benchmarks.run` times it with `benchmarks.timing.measure`. Shared helpers for the
training steps live here: the bf16 autocast context and the AdamW construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class Workload:
    """`step()`: one unit of work (a training step, one sampling batch, ...), no host sync inside.

    `images_per_step`: images (or samples) one step processes, for images/s. `flops_per_step`:
    model FLOPs of one step (None = not counted); `flops_method` says how they were obtained.
    """

    step: Callable[[], object]
    images_per_step: int
    flops_per_step: float | Callable[[], float] | None  # a callable is resolved after timing
    flops_method: str
    notes: list[str] = field(default_factory=list)
    params: int | None = None  # trainable parameters


def autocast(device: torch.device, dtype: str):
    """bf16 autocast around forward + loss (weights, optimiser and EMA stay fp32); fp32: no-op;
    tf32: fp32 with TF32 matmuls/convolutions allowed (the official samplers' setting, `vfmvae sample`'s
    default ``--precision fp32`` on GPU)."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if dtype == "tf32":
        return _allow_tf32()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _allow_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def adamw(
    params: Iterable[torch.nn.Parameter],
    device: torch.device,
    fused: bool,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one launch for all tensors) or the foreach implementation."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the optimiser got no trainable parameters")
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **kind)


def trainable_count(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def count_first_call(step: Callable[[], object]) -> tuple[Callable[[], object], Callable[[], float]]:
    """Wrap `step` so that its first call (a warm-up step) runs under `FlopCounterMode`.

    Returns `(wrapped_step, flops)`; `flops()` gives the count after the first call. Saves one
    extra step for workloads whose FLOPs are measured rather than computed.
    """
    from benchmarks.flops import count_flops

    state: dict[str, float] = {}

    def wrapped():
        if "flops" not in state:
            result = []
            state["flops"] = float(count_flops(lambda: result.append(step())))
            return result[0]
        return step()

    def flops() -> float:
        if "flops" not in state:
            raise RuntimeError("FLOPs are counted on the first step; run the step first")
        return state["flops"]

    return wrapped, flops
