"""Improved precision and recall (Kynkäänniemi et al. 2019) exactly as the ADM evaluator computes them (k = 3).

The reference is `openai/guided-diffusion`, `evaluations/evaluator.py` (`ManifoldEstimator`, `DistanceBlock`,
`_batch_pairwise_distances`); the protocol is described in (docs/design.md, "Evaluation protocol"). Inputs are the
`(N, D)` pool_3 features of the reference and sample batches, as float32 (ADM feeds float32 placeholders, so
float64 features are first rounded to float32, then to float16).

Distances are *squared* Euclidean, `|u|^2 - 2 u.v + |v|^2` clamped at 0, computed per block of rows x columns
(10,000 x 10,000 in ADM). In the default ``"float16"`` mode each block follows ADM's `DistanceBlock`:

1. both float32 feature blocks are cast to float16;
2. `|u|^2`: the squares are rounded to float16 element by element, then summed to one float16 number per row;
3. `u.v`: a float16 GEMM (float16 operands, float32 accumulation as cuBLAS runs TensorFlow's float16 matmul,
   float16 result);
4. `(|u|^2 - 2 u.v) + |v|^2` and the clamp at 0 in float16, in that order (each operation rounds to float16);
5. if any entry of the float16 block is not finite (overflow), the *whole block* is recomputed in float32 from
   the float32 features (ADM's `tf.cond`); otherwise the float16 block is widened to float32.

Radii and the comparisons `d <= r` are float32, as in ADM. The orientation is ADM's too: a point's radius is its
(k+1)-th smallest distance in its own row of the (set x set) matrix (rank 0 is the point itself), and precision and
recall both come from blocks with reference rows and sample columns (float16 rounding is not symmetric in u, v).

``"float32"`` and ``"float64"`` compute every block in that precision (no float16, no fallback). They move
precision and recall by about 1e-3 against ADM's values, because float16 distances at pool_3 scale (squared norms
in the hundreds, float16 steps of 0.25-1) decide the borderline comparisons differently.

Not reproduced bit for bit (declared in the README's deviations): TensorFlow's GPU `reduce_sum` accumulates the
float16 squares in float16 in CUB's summation order; here they are summed in float32 and rounded once, the
correctly rounded value, which can differ from a TensorFlow run by about one float16 step of the norm. The float32
fallback runs without TF32 (:func:`vfmvae.metrics.numerics.full_fp32`), whereas TensorFlow >= 2.4 allows TF32 on
Ampere and newer GPUs.
"""

from __future__ import annotations

import logging

import torch

from .numerics import full_fp32

__all__ = [
    "ADM_BLOCK_SIZE",
    "PR_DISTANCE_DTYPES",
    "adm_float16_distances",
    "distance_block",
    "manifold_radii",
    "pairwise_sq_distances",
    "precision_recall",
]

log = logging.getLogger(__name__)

ADM_BLOCK_SIZE = 10000  # ManifoldEstimator row_batch_size = col_batch_size
PR_DISTANCE_DTYPES = ("float16", "float32", "float64")  # "float16" = ADM's float16 blocks with float32 fallback
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def _dtype_name(dtype: torch.dtype | str) -> str:
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if name not in PR_DISTANCE_DTYPES:
        raise ValueError(f"precision/recall distance dtype must be one of {PR_DISTANCE_DTYPES}, got {dtype!r}")
    return name


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `(n, d), (m, d) -> (n, m)` in the dtype of `u`, `v`, clamped at 0."""
    norm_u = (u * u).sum(1, keepdim=True)
    norm_v = (v * v).sum(1, keepdim=True).T
    return (norm_u - 2.0 * (u @ v.T) + norm_v).clamp_min(0.0)


def adm_float16_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ADM's float16 distance block `(n, d), (m, d) float32 -> (n, m) float16` (steps 1-4 of the module doc).

    May hold `inf`/`nan` when the features overflow float16; :func:`distance_block` then falls back to float32.
    """
    u16, v16 = u.to(torch.float16), v.to(torch.float16)
    # tf.square in float16 rounds each square; the row sum is accumulated in float32 and rounded once.
    norm_u = (u16 * u16).float().sum(1).to(torch.float16)[:, None]
    norm_v = (v16 * v16).float().sum(1).to(torch.float16)[None, :]
    # Products of float16 numbers are exact in float32, so this is the float16 GEMM with float32 accumulation.
    uv = (u16.float() @ v16.float().T).to(torch.float16)
    return (norm_u - 2 * uv + norm_v).clamp_min(0)  # float16 arithmetic, left to right as in ADM


def distance_block(u: torch.Tensor, v: torch.Tensor, dtype: str = "float16") -> tuple[torch.Tensor, bool]:
    """One block of squared distances as a float32 (float64 in that mode) tensor, and whether it fell back.

    `u`, `v` are float32 `(n, d)`, `(m, d)` features (float64 in the ``"float64"`` mode).
    """
    if dtype != "float16":
        return pairwise_sq_distances(u, v), False
    d = adm_float16_distances(u, v)
    if bool(torch.isfinite(d).all()):
        return d.float(), False
    return pairwise_sq_distances(u, v), True  # ADM recomputes the whole block from the float32 features


class _BlockCounter:
    """Counts the float16 blocks that overflowed, for one log line per evaluation."""

    def __init__(self, dtype: str):
        self.dtype, self.blocks, self.fallbacks = dtype, 0, 0

    def __call__(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d, fell_back = distance_block(u, v, self.dtype)
        self.blocks += 1
        self.fallbacks += int(fell_back)
        return d


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def manifold_radii(
    features: torch.Tensor, k: int = 3, block_size: int = ADM_BLOCK_SIZE, dtype: str = "float16", _block=None
) -> torch.Tensor:
    """k-NN radii `(N,)` of `(N, D)` features: the (k+1)-th smallest distance of each row, itself included.

    `features` must already be in the working dtype (float32, or float64 in the ``"float64"`` mode).
    """
    n = features.shape[0]
    if n < k + 1:
        raise ValueError(f"need more than k={k} points to estimate a manifold, got {n}")
    block = _block or _BlockCounter(dtype)
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for rows in _blocks(n, block_size):
        # ADM fills a (rows, N) float32 buffer block by block, so the fallback is decided per column block.
        row = torch.cat([block(features[rows], features[cols]) for cols in _blocks(n, block_size)], dim=1)
        radii[rows] = row.kthvalue(k + 1, dim=1).values.to(features.dtype)
    return radii


def _coverage(
    ref: torch.Tensor, radii_ref: torch.Tensor, smp: torch.Tensor, radii_smp: torch.Tensor, block_size: int, block
) -> tuple[torch.Tensor, torch.Tensor]:
    """ADM's `evaluate_pr`: `(samples inside a reference ball, references inside a sample ball)`, both boolean."""
    smp_in = torch.zeros(smp.shape[0], dtype=torch.bool, device=smp.device)
    ref_in = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
    for rows in _blocks(ref.shape[0], block_size):
        for cols in _blocks(smp.shape[0], block_size):
            d = block(ref[rows], smp[cols])  # (reference rows, sample columns), as ADM's less_thans
            ref_in[rows] |= (d <= radii_smp[cols][None, :]).any(dim=1)
            smp_in[cols] |= (d <= radii_ref[rows][:, None]).any(dim=0)
    return smp_in, ref_in


def _as_tensor(features, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x.to(device=device, dtype=dtype)


def precision_recall(
    reference_features,
    sample_features,
    k: int = 3,
    *,
    block_size: int = ADM_BLOCK_SIZE,
    dtype: torch.dtype | str = "float16",
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """ADM precision and recall of samples vs references (both `(N, D)` pool_3 features).

    Args:
        dtype: distance precision, one of :data:`PR_DISTANCE_DTYPES` (or the torch dtype). ``"float16"`` (default,
            the paper protocol) is ADM's float16 blocks with the float32 fallback; see the module docstring.
        block_size: rows/columns per distance block (ADM: 10,000). Only the float16 fallback depends on it.

    Returns `{"precision": ..., "recall": ...}`. Runs without TF32 whatever the caller enabled.
    """
    mode = _dtype_name(dtype)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    work = torch.float64 if mode == "float64" else torch.float32
    ref = _as_tensor(reference_features, "reference_features", work, device)
    smp = _as_tensor(sample_features, "sample_features", work, device)
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {ref.shape[1]} vs samples {smp.shape[1]}")
    block = _BlockCounter(mode)
    with full_fp32():
        radii_ref = manifold_radii(ref, k, block_size, mode, _block=block)
        radii_smp = manifold_radii(smp, k, block_size, mode, _block=block)
        smp_in, ref_in = _coverage(ref, radii_ref, smp, radii_smp, block_size, block)
    if block.fallbacks:
        log.warning(
            "precision/recall: %d of %d float16 distance blocks overflowed and were recomputed in float32 (as ADM)",
            block.fallbacks,
            block.blocks,
        )
    return {"precision": smp_in.double().mean().item(), "recall": ref_in.double().mean().item()}
