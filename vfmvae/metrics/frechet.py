"""Fréchet distance between Gaussian feature statistics: gFID on pool_3, sFID on mixed_6/conv.

See (docs/design.md, "Evaluation protocol"). FD = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}), in
float64 (FID against the ADM reference batch is sensitive to the precision of this computation).

ADM's evaluator takes `scipy.linalg.sqrtm(S1 @ S2)`, retries with 1e-6 on the diagonals when that is non-finite,
and drops a small imaginary part. That route can return NaN or garbage for (near-)singular covariances. Here the
trace term uses the identity Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum_i sqrt(lambda_i) over the
eigenvalues of the *symmetric* PSD matrix S1^{1/2} S2 S1^{1/2}: two `eigh` calls, never complex, never NaN. Tiny
negative eigenvalues (round-off) are clipped to 0 and a warning is issued when they are not tiny or when a
covariance is ill-conditioned, so a degenerate estimate is never silent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureStatistics", "compute_statistics", "frechet_distance", "IllConditionedWarning"]


class IllConditionedWarning(UserWarning):
    """The covariances are singular or badly conditioned; the FD is still finite but less trustworthy."""


@dataclass(frozen=True)
class FeatureStatistics:
    """Gaussian statistics of `(N, D)` features: `mu (D,)`, `sigma (D, D)` (unbiased, as `np.cov`), float64."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int | None = None

    def __post_init__(self) -> None:
        mu, sigma = np.asarray(self.mu), np.asarray(self.sigma)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"statistics need mu (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("statistics contain NaN or Inf")

    def frechet_distance(self, other: FeatureStatistics) -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


def compute_statistics(features: np.ndarray) -> FeatureStatistics:
    """Mean and unbiased covariance (ddof 1, `np.cov(rowvar=False)` as ADM) of `(N, D)` features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return FeatureStatistics(mu=mu, sigma=sigma, num_samples=x.shape[0])


def _psd_sqrt(sigma: np.ndarray, name: str, cond_warn: float) -> np.ndarray:
    """Symmetric square root of a covariance via eigh; warns when singular / ill-conditioned."""
    sym = 0.5 * (sigma + sigma.T)
    eigval, eigvec = np.linalg.eigh(sym)
    top = max(float(eigval[-1]), 0.0)
    floor = -1e-10 * max(top, 1e-300)
    if eigval[0] < floor * 1e3:
        warnings.warn(
            f"{name} has a clearly negative eigenvalue {eigval[0]:.3e} (largest {top:.3e}); it is not a valid "
            "covariance, negative part clipped",
            IllConditionedWarning,
            stacklevel=3,
        )
    if top > 0 and (eigval[0] <= 0 or top / eigval[0] > cond_warn):
        warnings.warn(
            f"{name} is singular or ill-conditioned (eigenvalues in [{eigval[0]:.3e}, {top:.3e}]); "
            "typical when there are fewer samples than feature dimensions",
            IllConditionedWarning,
            stacklevel=3,
        )
    root = np.sqrt(np.clip(eigval, 0.0, None))
    return (eigvec * root) @ eigvec.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, cond_warn: float = 1e12
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) in float64 with a robust matrix square root.

    Shapes: `mu (D,)`, `sigma (D, D)`. Raises on mismatched shapes or non-finite input; never returns NaN.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances must both be (D, D) with D={mu1.shape[0]}: got {sigma1.shape}, {sigma2.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf")
    root1 = _psd_sqrt(sigma1, "sigma1", cond_warn)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    scale = max(float(np.abs(eig).max(initial=0.0)), 1e-300)
    if eig[0] < -1e-6 * scale:
        warnings.warn(
            f"sigma1^1/2 sigma2 sigma1^1/2 has a negative eigenvalue {eig[0]:.3e} (scale {scale:.3e}); clipped to 0",
            IllConditionedWarning,
            stacklevel=2,
        )
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    if not np.isfinite(fd):  # cannot happen with finite inputs, but never return a silent NaN
        raise FloatingPointError("Fréchet distance is not finite")
    return fd
