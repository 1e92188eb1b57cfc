"""Mapping network: global latent -> style vector w for every modulated layer (docs/design.md, "Tokenizer architecture").

`z_pooled (B, lifted_dim) -> normalize_2nd_moment -> FC+lrelu -> ... -> FC (linear) -> w (B, w_dim)`,
equalised-LR layers with lr multiplier 0.01; w is broadcast to all `num_ws` style slots
(every layer gets the same w; unconditional model, no class/text input).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import VFMVAEConfig
from .layers import EqualizedLinear, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """`forward(z_pooled (B, D), truncation_psi=1) -> ws (B, num_ws, w_dim)`.

    A running mean `w_avg` (beta 0.995) is tracked in training for truncation only (psi=1 in
    the paper, so it never affects outputs).
    """

    def __init__(self, cfg: VFMVAEConfig):
        super().__init__()
        dims = [cfg.lifted_dim] * cfg.mapping_layers + [cfg.w_dim]
        self.num_layers = cfg.mapping_layers
        for i in range(self.num_layers):
            act = "linear" if i == self.num_layers - 1 else "lrelu"
            self.add_module(
                f"fc{i}", EqualizedLinear(dims[i], dims[i + 1], activation=act, lr_multiplier=cfg.mapping_lr_multiplier)
            )
        self.num_ws = cfg.num_ws
        self.w_avg_beta = cfg.w_avg_beta
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z_pooled: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        x = normalize_2nd_moment(z_pooled)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.training and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x.unsqueeze(1).expand(-1, self.num_ws, -1)
