"""Full-fp32 islands for metric computations (style principle 8).

On Ampere+ GPUs cuDNN convolutions default to TF32 (`torch.backends.cudnn.allow_tf32 = True`) and a training script
may also enable TF32 matmuls; both would silently lower the precision of metric features (~1e-3 relative) and make
them depend on kernel choices. Metrics run inside `full_fp32()`, which restores the caller's settings afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["full_fp32"]


@contextmanager
def full_fp32() -> Iterator[None]:
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])
