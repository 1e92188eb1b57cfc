"""Inception Score with ADM's split convention (guided-diffusion `evaluator.py::compute_inception_score`).

ADM feeds the 2048-d pool_3 features through the graph's `softmax/logits/MatMul` weight only (no bias, i.e.
torch-fidelity's `logits_unbiased`), takes the softmax over all 1008 outputs, then splits the predictions into
consecutive chunks of `split_size = 5000` rows (NOT into 10 equal splits as torch-fidelity / improved-gan do; the
last chunk may be shorter) and returns the plain mean of exp(E_x KL(p(y|x) || p(y))) over the chunks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["inception_score", "ADM_IS_SPLIT_SIZE"]

ADM_IS_SPLIT_SIZE = 5000


def _softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits: np.ndarray, split_size: int = ADM_IS_SPLIT_SIZE) -> float:
    """IS from unbiased Inception logits `(N, C)` (ADM: C = 1008), chunked by `split_size` rows; float64."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"logits must be 2-D (N, C) with N >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("logits contain NaN or Inf")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}")
    probs = _softmax64(x)
    # log(p) with p = 0 only happens for underflowed classes whose KL contribution is p*log(p) -> 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.log(probs)
    scores = []
    for start in range(0, len(probs), split_size):
        part, log_part = probs[start : start + split_size], log_p[start : start + split_size]
        log_marginal = np.log(part.mean(axis=0, keepdims=True))
        kl_terms = np.where(part > 0, part * (log_part - log_marginal), 0.0)
        scores.append(np.exp(kl_terms.sum(axis=1).mean()))
    return float(np.mean(scores))
