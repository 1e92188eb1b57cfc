"""Full-fp32 islands for metric computations (docs/design.md, "Precision policy").

On Ampere+ GPUs cuDNN convolutions default to TF32 and a training script may also enable TF32 matmuls
(`torch.set_float32_matmul_precision("high")`); on CPUs with bfloat16 units `"medium"` lets oneDNN run float32
matmuls in bfloat16. Any of these would silently lower the precision of metric features and distances (~1e-3
relative) and make them depend on the hardware. Metrics run inside `full_fp32()`, which restores the caller's
settings afterwards.

PyTorch >= 2.9 keeps these settings per backend and operation (`torch.backends.<backend>.<op>.fp32_precision`,
one of ``"ieee"``, ``"tf32"``, ``"bf16"``, ``"none"`` = inherit); the legacy getters
(`torch.get_float32_matmul_precision()`, `allow_tf32`) raise when a caller mixed the two APIs, so only the
per-operation API is read and written here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["FP32_PRECISION_SETTINGS", "full_fp32", "fp32_precision_state"]

# (backend, operation) pairs whose float32 precision a caller may have lowered.
FP32_PRECISION_SETTINGS = (
    ("cuda", "matmul"),
    ("cudnn", "conv"),
    ("cudnn", "rnn"),
    ("mkldnn", "matmul"),
    ("mkldnn", "conv"),
    ("mkldnn", "rnn"),
)


def _setting(backend: str, op: str):
    return getattr(getattr(torch.backends, backend), op)


def fp32_precision_state() -> dict[str, str]:
    """``{"cuda.matmul": "tf32", ...}``: the current float32 precision of every setting above."""
    return {f"{b}.{op}": _setting(b, op).fp32_precision for b, op in FP32_PRECISION_SETTINGS}


@contextmanager
def full_fp32() -> Iterator[None]:
    """Run the block with IEEE float32 matmuls and convolutions on every backend (no TF32, no bfloat16)."""
    saved = [(_setting(b, op), _setting(b, op).fp32_precision) for b, op in FP32_PRECISION_SETTINGS]
    for setting, _ in saved:
        setting.fp32_precision = "ieee"
    try:
        yield
    finally:
        for setting, value in saved:
            setting.fp32_precision = value
