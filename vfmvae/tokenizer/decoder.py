"""VFM-VAE decoder: latent z -> image in [-1, 1] (docs/design.md, "Tokenizer architecture").

    z (B, z_dim, h, w) --lift (AttnProjection z_dim -> 16 z_dim per token)--> z_lifted (B, D, h, w)
    z_lifted --global average pool--> (B, D) --mapping--> ws (B, num_ws, w_dim)
    (z_lifted, ws) --synthesis--> image (B, 3, 16h, 16w) + multi-scale images

Buildable on its own (no VFM, no encoder head) so diffusion jobs that only decode never build
the 300 M-parameter VFM: `Decoder(cfg)` or `VFMVAE.decoder_only(cfg)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .attn_projection import AttnProjection
from .conditioning import check_condition
from .config import VFMVAEConfig
from .latent_head import grid_to_tokens, tokens_to_grid
from .mapping import MappingNetwork
from .synthesis import SynthesisNetwork


@dataclass
class DecoderOutput:
    """`image (B, 3, H, W)` in [-1, 1] (no clamp); `multiscale`: {side: (B, 3, side, side*W/H)},
    largest first (H/2, H/4, ..., H/32); `ws (B, num_ws, w_dim)` and `z_lifted (B, D, h, w)` for inspection."""

    image: torch.Tensor
    multiscale: dict[int, torch.Tensor] = field(default_factory=dict)
    ws: torch.Tensor | None = None
    z_lifted: torch.Tensor | None = None


class Decoder(nn.Module):
    """Lift + mapping network + synthesis network (128.1 M params in the paper preset)."""

    def __init__(self, cfg: VFMVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.lift = AttnProjection(cfg.z_dim, cfg.lifted_dim, cfg.lift_layers)
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)
        self.min_latent_multiple = max([1] + [a.unshuffle for a in self.synthesis.fusion.values()])

    def lift_latent(self, z: torch.Tensor) -> torch.Tensor:
        """`(B, z_dim, h, w) -> (B, D, h, w)`: per-token attention projection (attends over all h*w tokens)."""
        h, w = z.shape[-2:]
        return tokens_to_grid(self.lift(grid_to_tokens(z)), (h, w))

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"Decoder: z must be (B, {self.cfg.z_dim}, h, w), got {tuple(z.shape)}")
        m = self.min_latent_multiple
        if z.shape[-2] % m or z.shape[-1] % m:
            raise ValueError(
                f"Decoder: latent side {tuple(z.shape[-2:])} must be divisible by {m} "
                f"(fixed unshuffle of the first fusion adapter)"
            )

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, text=None, class_labels=None) -> DecoderOutput:
        """`text`: `VFMVAE.encode_text` output (text, cls2text); `class_labels`: int64 (B,) (cls2id)."""
        self._check(z)
        text, class_labels = check_condition(self.cfg, z.shape[0], text, class_labels, z.device)
        z_lifted = self.lift_latent(z)
        z_pooled = F.adaptive_avg_pool2d(z_lifted, 1).flatten(1)
        pooled = None if text is None else text.pooled
        ws = self.mapping(z_pooled, truncation_psi=truncation_psi, text_pooled=pooled, class_labels=class_labels)
        image, multiscale = self.synthesis(z_lifted, ws, text)
        return DecoderOutput(image=image, multiscale={m.shape[-2]: m for m in multiscale}, ws=ws, z_lifted=z_lifted)
