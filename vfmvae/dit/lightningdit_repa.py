"""LightningDiT with an optional REPA projector, and the ``lightningdit`` family of the network registry.

With ``repa_encoder_depth`` set, :class:`LightningDiTREPA` adds a REPA projector
(Linear-SiLU-Linear-SiLU-Linear, as REG's) on the output of block ``repa_encoder_depth`` (1-based). This
is an option *beyond the paper*: the paper's LightningDiT runs have no representation alignment
(docs/design.md, "Deviations from the official code"). The projector is a sub-module of the network, so
EMA, FSDP wrapping and checkpoints include it; its keys (``projectors.*``) are extra, so the plain
LightningDiT keys stay loadable as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from vfmvae.dit.convert import from_official_lightningdit
from vfmvae.dit.interface import NetworkOutput
from vfmvae.dit.lightningdit import LIGHTNINGDIT_PRESETS, LightningDiT, build_lightningdit
from vfmvae.dit.registry import NetworkFamily, register_network
from vfmvae.dit.sit_reg import build_projector

# Constructor kwargs of the paper's LightningDiT run, for released official files (docs/design.md, "Diffusion networks and the network interface").
PAPER_LIGHTNINGDIT_KWARGS = dict(
    input_size=16,
    patch_size=1,
    in_channels=32,
    use_qknorm=True,
    use_swiglu=True,
    use_rope=True,
    use_rmsnorm=True,
    wo_shift=False,
)


class LightningDiTREPA(LightningDiT):
    """LightningDiT plus REPA projectors on the output of block ``encoder_depth`` (1-based).

    ``forward(x, t, y)`` is the plain LightningDiT velocity (samplers see no difference);
    :meth:`forward_with_projections` returns ``(velocity (B, C, H, W), [ (B, N, z_dim) ... ])``.
    """

    fsdp_forward_methods = ("forward_with_projections",)

    def __init__(
        self,
        config,
        *,
        encoder_depth: int,
        projector_dim: int = 2048,
        z_dims: tuple[int, ...] = (768,),
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__(config, activation_checkpointing=activation_checkpointing)
        if not 1 <= encoder_depth <= config.depth:
            raise ValueError(f"repa_encoder_depth must be in [1, depth={config.depth}], got {encoder_depth}")
        if not z_dims or min(z_dims) < 1:
            raise ValueError(f"repa z_dims must be a non-empty tuple of positive sizes, got {z_dims}")
        self.encoder_depth = int(encoder_depth)
        self.z_dims = tuple(int(z) for z in z_dims)
        self.projectors = nn.ModuleList(build_projector(config.hidden_size, projector_dim, z) for z in self.z_dims)
        for module in self.projectors.modules():  # same init as the rest of the network (xavier, zero bias)
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def alignment_dim(self) -> int:
        return self.z_dims[0]

    def forward_with_projections(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        """Velocity and the projector outputs of the block-``encoder_depth`` tokens ``(B, N, D)``."""
        velocity, hidden = self(x, t, y, return_hidden=[self.encoder_depth - 1])
        tokens = hidden[self.encoder_depth - 1]
        return velocity, [proj(tokens) for proj in self.projectors]

    def training_forward(self, state: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> NetworkOutput:
        velocity, projections = self.forward_with_projections(state, t, condition)
        return NetworkOutput(velocity, projections)


def build_lightningdit_network(
    preset: str,
    overrides: Mapping[str, Any],
    *,
    activation_checkpointing: bool = False,
    repa_encoder_depth: int | None = None,
    repa_projector_dim: int = 2048,
    repa_z_dim: int = 768,
) -> LightningDiT:
    """The ``lightningdit`` family builder: plain LightningDiT, or LightningDiTREPA with ``repa_encoder_depth``."""
    if repa_encoder_depth is None:
        return build_lightningdit(preset, activation_checkpointing=activation_checkpointing, **overrides)
    return LightningDiTREPA(
        replace(LIGHTNINGDIT_PRESETS[preset], **overrides),
        encoder_depth=repa_encoder_depth,
        projector_dim=repa_projector_dim,
        z_dims=(repa_z_dim,),
        activation_checkpointing=activation_checkpointing,
    )


LIGHTNINGDIT_FAMILY = register_network(
    NetworkFamily(
        name="lightningdit",
        presets=LIGHTNINGDIT_PRESETS,
        default_preset="LightningDiT-XL/1",
        build=build_lightningdit_network,
        from_official=from_official_lightningdit,
        official_kwargs=PAPER_LIGHTNINGDIT_KWARGS,
    )
)
