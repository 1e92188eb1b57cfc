"""KL divergence of the diagonal-Gaussian posterior against N(0, I) (docs/design.md, "Tokenizer stages and losses").

The official encoder (LDM `DiagonalGaussianDistribution`) clamps the log-variance to [-30, 20]
before anything else, sums the KL over (C, H, W) per sample and averages over the batch.
Loss weight 1e-6 in stages 0-1, off afterwards.
"""

from __future__ import annotations

import torch

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the encoder's `(B, 2C, h, w)` output into `(mean, logvar)`, each `(B, C, h, w)`.

    The first C channels are the mean, the last C the log-variance (official channel order).
    """
    if moments.dim() != 4 or moments.shape[1] % 2 != 0:
        raise ValueError(f"moments must be (B, 2C, h, w) with an even channel count, got {tuple(moments.shape)}")
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, clamp_logvar: bool = True) -> dict[str, torch.Tensor]:
    """KL( N(mean, exp(logvar)) || N(0, I) ), summed per sample, averaged over the batch.

    Args:
        mean: `(B, C, h, w)` posterior mean.
        logvar: `(B, C, h, w)` posterior log-variance (raw encoder output; clamped to [-30, 20]
            here as in the official posterior, so callers may pass the unclamped half).
        clamp_logvar: keep True for parity with the official code.

    Returns:
        `{"kl": scalar, "kl_per_sample": (B,)}`: `kl_per_sample[b] = 0.5 * sum(mean^2 + var - 1 - logvar)`.
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar shapes differ: {tuple(mean.shape)} vs {tuple(logvar.shape)}")
    if mean.dim() < 2:
        raise ValueError(f"expected a batched tensor (B, ...), got shape {tuple(mean.shape)}")
    # KL is a reduction over thousands of elements: compute it in float32 whatever the autocast.
    mean = mean.float()
    logvar = logvar.float()
    if clamp_logvar:
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    per_element = mean.square() + logvar.exp() - 1.0 - logvar
    per_sample = 0.5 * per_element.flatten(1).sum(dim=1)
    return {"kl": per_sample.mean(), "kl_per_sample": per_sample}
