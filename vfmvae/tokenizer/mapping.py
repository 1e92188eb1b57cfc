"""Mapping network: global latent (+ condition) -> style vector w for every modulated layer (docs/design.md,
"Tokenizer architecture"; conditional decoders: docs/conditional.md).

`z_pooled (B, lifted_dim) -> normalize_2nd_moment -> FC+lrelu -> ... -> FC (linear) -> w (B, w_dim)`,
equalised-LR layers with lr multiplier 0.01; w is broadcast to all `num_ws` style slots
(every layer gets the same w). Conditional decoders (official `MappingNetwork`, by `label_type`):

- "text" / "cls2text": `w = cat(MLP(n(z_pooled)), F.normalize(text_pooled))`, width `w_dim + text_dim`;
- "cls2id": `w = MLP(cat(n(z_pooled), n(embed(one_hot(label)))))`, the MLP `lifted_dim + class_embed_dim` wide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import ClassEmbedding
from .config import VFMVAEConfig
from .layers import EqualizedLinear, normalize_2nd_moment


class MappingNetwork(nn.Module):
    """`forward(z_pooled (B, D), truncation_psi=1, text_pooled=None, class_labels=None) -> ws (B, num_ws, style_dim)`.

    A running mean `w_avg` of the MLP output (beta 0.995) is tracked in training for truncation only
    (psi=1 in the paper, so it never affects outputs).
    """

    def __init__(self, cfg: VFMVAEConfig):
        super().__init__()
        self.embed = ClassEmbedding(cfg.num_classes, cfg.class_embed_dim) if cfg.label_type == "cls2id" else None
        in_dim = cfg.lifted_dim + (cfg.class_embed_dim if self.embed is not None else 0)
        dims = [in_dim] * cfg.mapping_layers + [cfg.w_dim]
        self.num_layers = cfg.mapping_layers
        for i in range(self.num_layers):
            act = "linear" if i == self.num_layers - 1 else "lrelu"
            self.add_module(
                f"fc{i}", EqualizedLinear(dims[i], dims[i + 1], activation=act, lr_multiplier=cfg.mapping_lr_multiplier)
            )
        self.num_ws = cfg.num_ws
        self.uses_text = cfg.uses_text
        self.w_avg_beta = cfg.w_avg_beta
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(
        self,
        z_pooled: torch.Tensor,
        truncation_psi: float = 1.0,
        text_pooled: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = normalize_2nd_moment(z_pooled)
        if self.embed is not None:
            x = torch.cat([x, normalize_2nd_moment(self.embed(class_labels))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.training and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        if self.uses_text:
            x = torch.cat([x, F.normalize(text_pooled.to(x.dtype), dim=1)], dim=1)
        return x.unsqueeze(1).expand(-1, self.num_ws, -1)
