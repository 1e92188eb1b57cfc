"""CKNNA: centered kernel nearest-neighbour alignment (paper SE-CKNNA analysis; docs/design.md, "SE-CKNNA").

Exactly the official `tools/evaluate_alignment/metrics.py` (= platonic-rep `AlignmentMetrics.cknna`) with its
preprocessing `load_and_process_features`:

1. per matrix, one global outlier threshold tau = sort(|X|.flatten())[int(0.95 * numel)], X = clamp(X, -tau, tau);
2. row-wise L2 normalisation (no centering);
3. cosine kernels K = A A^T, L = B B^T;
4. directed top-k masks (diagonal excluded), M = M^K * M^L;
5. unbiased HSIC (Song et al. 2012, Eq. 5) with the *transpose* term sum_ij P'_ij Q'_ji;
6. CKNNA = HSIC(M K, M L) / (sqrt(HSIC(M^K K, M^K K) * HSIC(M^L L, M^L L)) + 1e-6).

Memory: the official code materialises several n x n matrices (~400 MB each at n = 10,000). Every masked kernel
has at most `topk` non-zeros per row, so here the kernels are computed in row blocks, only the top-k entries are
kept, and the HSIC terms are evaluated on that sparse support: O(block * n + n * k) memory, identical maths.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .numerics import full_fp32

__all__ = ["cknna", "prepare_features", "remove_outliers", "topk_neighbours", "hsic_unbiased_sparse"]


def _check_features(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}")
    if not (x.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")


def remove_outliers(features: torch.Tensor, q: float = 0.95) -> torch.Tensor:
    """Clamp `(n, d)` features to [-tau, tau] with ONE global threshold (official `exact=True` mode).

    tau is the element at 0-based index int(q * numel) of the ascending sorted |X|; `q = 1` is a no-op.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"clip quantile q must be in (0, 1], got {q}")
    if q == 1:
        return features
    flat = features.reshape(-1).abs()
    index = int(q * features.numel())
    # kthvalue is 1-based and equals sort()[index] without a full sort copy.
    tau = flat.kthvalue(index + 1).values
    return features.clamp(-tau, tau)


def prepare_features(features: torch.Tensor, clip_quantile: float | None = 0.95) -> torch.Tensor:
    """Official preprocessing: float32, global-quantile clipping, then row L2 normalisation. `(n, d) -> (n, d)`."""
    x = features.float()
    if clip_quantile is not None:
        x = remove_outliers(x, clip_quantile)
    return F.normalize(x, dim=-1)


def topk_neighbours(features: torch.Tensor, topk: int, block_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed k-NN of each row under the linear kernel X X^T, diagonal excluded.

    Returns `(indices (n, k) long, kernel values (n, k) float)`; computed in row blocks of `block_size`.
    """
    n = features.shape[0]
    indices = torch.empty(n, topk, dtype=torch.long, device=features.device)
    values = torch.empty(n, topk, dtype=features.dtype, device=features.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        gram = features[start:stop] @ features.T  # (b, n)
        rows = torch.arange(stop - start, device=features.device)
        gram[rows, rows + start] = float("-inf")  # official: fill_diagonal_(-inf) before topk
        vals, idx = torch.topk(gram, topk, dim=1)
        indices[start:stop], values[start:stop] = idx, vals
    return indices, values


def hsic_unbiased_sparse(
    rows: torch.Tensor, cols: torch.Tensor, p: torch.Tensor, q: torch.Tensor, n: int
) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012, Eq. 5) of two n x n matrices sharing the sparse support (rows, cols).

    P'_{rows[e], cols[e]} = p[e], Q' likewise; no entry may lie on the diagonal (the official code zeroes it).
    HSIC = [sum_ij P'_ij Q'_ji + sum(P') sum(Q') / ((n-1)(n-2)) - 2/(n-2) 1^T P' Q' 1] / (n (n-3)).
    Accumulated in float64.
    """
    p, q = p.double(), q.double()
    # Transpose term: for every entry (i, j) look up (j, i) in the support via sorted linear keys.
    keys = rows * n + cols
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    transposed = cols * n + rows
    pos = torch.searchsorted(sorted_keys, transposed).clamp(max=max(len(keys) - 1, 0))
    found = sorted_keys[pos] == transposed if len(keys) else torch.zeros_like(keys, dtype=torch.bool)
    trace_term = (p[found] * q[order[pos[found]]]).sum()
    # 1^T P' Q' 1 = sum_j (column sums of P')_j (row sums of Q')_j
    col_sum_p = torch.zeros(n, dtype=torch.float64, device=p.device).index_add_(0, cols, p)
    row_sum_q = torch.zeros(n, dtype=torch.float64, device=q.device).index_add_(0, rows, q)
    value = trace_term + p.sum() * q.sum() / ((n - 1) * (n - 2)) - 2.0 * (col_sum_p * row_sum_q).sum() / (n - 2)
    return value / (n * (n - 3))


def _self_hsic(indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    v = values.reshape(-1)
    return hsic_unbiased_sparse(rows, indices.reshape(-1), v, v, n)


def _cross_hsic(idx_k, val_k, idx_l, val_l) -> torch.Tensor:
    """HSIC(M K, M L) with M = M^K * M^L: per row the intersection of both neighbour sets."""
    n, k = idx_k.shape
    match = idx_k[:, :, None] == idx_l[:, None, :]  # (n, k, k); each index appears once per row
    row, a, b = match.nonzero(as_tuple=True)
    return hsic_unbiased_sparse(row, idx_k[row, a], val_k[row, a], val_l[row, b], n)


def cknna(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    topk: int = 10,
    *,
    preprocess: bool = True,
    clip_quantile: float | None = 0.95,
    block_size: int = 2048,
) -> float:
    """CKNNA between paired features `features_a (n, dA)` and `features_b (n, dB)` (rows = same images).

    Args:
        topk: neighbourhood size k (paper: 10); must satisfy 2 <= k <= n - 1.
        preprocess: apply the official clipping + row L2 normalisation (switch off for already-processed inputs).
        clip_quantile: global |x| quantile for clipping (official 0.95); None disables clipping only.
        block_size: rows per kernel block; bounds memory at block_size * n floats.

    Returns the scalar CKNNA (identical inputs give ~1 - O(1e-6) because of the official +1e-6). The unbiased
    estimator is not bounded by 1 for small n (a few dozen rows); the paper uses n = 10,000.
    """
    _check_features(features_a, "features_a")
    _check_features(features_b, "features_b")
    n = features_a.shape[0]
    if features_b.shape[0] != n:
        raise ValueError(
            f"features_a and features_b must have the same number of rows, got {n} and {features_b.shape[0]}"
        )
    if not isinstance(topk, int) or topk < 2:
        raise ValueError(f"CKNNA requires an integer topk >= 2, got {topk!r}")
    if n < 4 or topk > n - 1:
        raise ValueError(f"CKNNA needs n >= 4 and topk <= n - 1, got n={n}, topk={topk}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if preprocess:
        a, b = prepare_features(features_a, clip_quantile), prepare_features(features_b, clip_quantile)
    else:
        a, b = features_a.float(), features_b.float()
    with full_fp32():  # the official run allowed TF32; full fp32 is the more faithful value of the same maths
        idx_k, val_k = topk_neighbours(a, topk, block_size)
        idx_l, val_l = topk_neighbours(b, topk, block_size)
    sim_kl = _cross_hsic(idx_k, val_k, idx_l, val_l)
    sim_kk = _self_hsic(idx_k, val_k)
    sim_ll = _self_hsic(idx_l, val_l)
    if not float(sim_kk * sim_ll) > 0:
        # The official code silently returns NaN here (sqrt of a negative); say why.
        warnings.warn(
            f"CKNNA: non-positive self-HSIC product ({float(sim_kk):.3e} x {float(sim_ll):.3e}); the result is NaN or 0 "
            "(degenerate features or too few samples for the unbiased estimator)",
            RuntimeWarning,
            stacklevel=2,
        )
    return float(sim_kl) / (float(torch.sqrt(sim_kk * sim_ll)) + 1e-6)
