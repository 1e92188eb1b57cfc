"""What every diffusion network on a square latent grid shares (docs/design.md, "Diffusion networks and the
network interface").

The `DiffusionNetwork` members that only depend on the latent shape and the block list: the latent
``(C, h, w)``, the token grid, the block count, the initial sampling state (Gaussian noise over the latent) and
the velocity (the network's own forward). A family whose state carries more (REG's class token) overrides
`initial_state` and `velocity`; the rest of the interface is each family's own.
"""

from __future__ import annotations

import torch

__all__ = ["LatentGridMixin", "LightningDiTShape"]


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


class LightningDiTShape:
    """Derived sizes of a LightningDiT-style config (fields ``hidden_size``, ``num_heads``, ``input_size``,
    ``patch_size``, ``mlp_ratio``, ``use_swiglu``, ``in_channels``, ``learn_sigma``); a base of the frozen config
    dataclasses of LightningDiT and of the text DiT built from its blocks."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        # SwiGLU keeps the parameter count of a GELU MLP of the same ratio: 2/3 of the hidden width.
        hidden = int(self.hidden_size * self.mlp_ratio)
        return int(2 / 3 * hidden) if self.use_swiglu else hidden

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels
