"""Improved precision / recall (Kynkäänniemi et al. 2019) as ADM's `ManifoldEstimator` (k = 3).

Per guided-diffusion `evaluator.py`:
- distances are *squared* Euclidean, |u|^2 - 2 u.v + |v|^2 clamped at 0;
- the radius of each point is its k-th smallest distance in its own set *with itself included* at rank 0
  (`np.partition(..., kth=[0..k])[:, k]`), i.e. the distance to its k-th nearest other point;
- precision = fraction of samples inside at least one reference hypersphere (d(ref_i, s_j) <= r_i);
- recall    = fraction of references inside at least one sample hypersphere.

Deviation (documented): ADM first computes the distance blocks in float16 and falls back to float32 only when a
block overflows; that makes borderline decisions depend on the block partition. Here distances are float32 by
default (float64 optional), so the result is independent of the block sizes.
"""

from __future__ import annotations

import torch

__all__ = ["manifold_radii", "precision_recall", "pairwise_sq_distances"]


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `(n, d), (m, d) -> (n, m)` computed as in ADM's `_batch_pairwise_distances`."""
    norm_u = (u * u).sum(1, keepdim=True)
    norm_v = (v * v).sum(1, keepdim=True).T
    return (norm_u - 2.0 * (u @ v.T) + norm_v).clamp_min(0.0)


def _as_tensor(features, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x.to(device=device, dtype=dtype)


def manifold_radii(features: torch.Tensor, k: int = 3, block_size: int = 10000) -> torch.Tensor:
    """k-NN radii (squared distance to the k-th nearest other point) of `(N, D)` features -> `(N,)`."""
    n = features.shape[0]
    if n < k + 1:
        raise ValueError(f"need more than k={k} points to estimate a manifold, got {n}")
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for start in range(0, n, block_size):
        d = pairwise_sq_distances(features[start : start + block_size], features)
        # rank 0 is the point itself (distance 0), so rank k is the k-th nearest neighbour.
        radii[start : start + block_size] = d.kthvalue(k + 1, dim=1).values
    return radii


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block_size: int) -> torch.Tensor:
    """Boolean `(len(points),)`: is each point inside any hypersphere (centre_i, radius_i)?"""
    inside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for start in range(0, centres.shape[0], block_size):
        c, r = centres[start : start + block_size], radii[start : start + block_size]
        for pstart in range(0, points.shape[0], block_size):
            d = pairwise_sq_distances(c, points[pstart : pstart + block_size])  # (c, p)
            inside[pstart : pstart + block_size] |= (d <= r[:, None]).any(dim=0)
    return inside


def precision_recall(
    reference_features,
    sample_features,
    k: int = 3,
    *,
    block_size: int = 10000,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """ADM precision and recall of samples vs references (both `(N, D)` pool_3 features).

    Returns `{"precision": ..., "recall": ...}`.
    """
    ref = _as_tensor(reference_features, "reference_features", dtype, device)
    smp = _as_tensor(sample_features, "sample_features", dtype, device)
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {ref.shape[1]} vs samples {smp.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    radii_ref = manifold_radii(ref, k, block_size)
    radii_smp = manifold_radii(smp, k, block_size)
    precision = _coverage(smp, ref, radii_ref, block_size).double().mean().item()
    recall = _coverage(ref, smp, radii_smp, block_size).double().mean().item()
    return {"precision": precision, "recall": recall}
