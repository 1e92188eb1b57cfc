"""Diagonal Gaussian posterior over the VFM-VAE latent (docs/design.md, "Tokenizer architecture").

Moments `(B, 2*z_dim, h, w)` split on channels into (mean, logvar); logvar is clamped to
[-30, 20] as in LDM's `DiagonalGaussianDistribution`. The official tokenizer always *samples*
(also when caching diffusion latents: docs/design.md, "Latent normalisation"); `mode()` is offered for analysis.
"""

from __future__ import annotations

import torch

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """Posterior `N(mean, exp(logvar))` per latent element.

    Attributes: `mean`, `logvar` (clamped), `std` — all `(B, C, h, w)`. Statistics are float32
    (style principle 8: the KL and the sampled z must not be computed in half precision).
    """

    def __init__(self, moments: torch.Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"DiagonalGaussian: moments must be (B, 2*C, h, w), got {tuple(moments.shape)}")
        moments = moments.float()
        self.moments = moments
        mean, logvar = moments.chunk(2, dim=1)
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def sample(self, eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """`z = mean + std * eps`, eps ~ N(0, I) unless given. `(B, C, h, w)`."""
        if eps is None:
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        elif eps.shape != self.mean.shape:
            raise ValueError(
                f"DiagonalGaussian.sample: eps shape {tuple(eps.shape)} != latent {tuple(self.mean.shape)}"
            )
        return self.mean + self.std * eps.to(self.mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per sample, `0.5 * sum_{c,h,w}(mean^2 + var - 1 - logvar)`: shape `(B,)`.

        The loss is its batch mean times the KL weight (1e-6 in stages 0-1).
        """
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)})"
