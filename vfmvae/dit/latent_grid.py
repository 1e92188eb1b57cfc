"""What every diffusion network on a square latent grid shares (docs/design.md, "Diffusion networks and the
network interface").

The `DiffusionNetwork` members that only depend on the latent shape and the block list: the latent
``(C, h, w)``, the token grid, the block count, the initial sampling state (Gaussian noise over the latent) and
the velocity (the network's own forward). A family whose state carries more (REG's class token) overrides
`initial_state` and `velocity`; the rest of the interface is each family's own.
"""

from __future__ import annotations

import torch

__all__ = ["LatentGridMixin"]


class LatentGridMixin:
    """Mixed into an ``nn.Module`` with ``config.in_channels``, ``config.input_size``, ``config.grid_size`` and
    ``blocks`` (placed before ``nn.Module`` in the bases)."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.config.input_size, self.config.input_size)

    @property
    def token_grid(self) -> int:
        return self.config.grid_size

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def initial_state(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """The latent noise ``(n, C, h, w)`` ~ N(0, I), float32 (the state is the latent alone)."""
        return torch.randn((n, *self.latent_shape), generator=generator, device=device)

    def velocity(self, state: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self(state, t, condition)
