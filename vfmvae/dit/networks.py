"""Building the diffusion network of a run, and LightningDiT with an optional REPA projector.

Plain PyTorch (no Lightning import): the `DiffusionModule` and `scripts/sample.py` both build their
network here, so a training checkpoint and a sampling run agree on the architecture.

* ``family="lightningdit"``: `vfmvae.dit.LightningDiT` (t = 1 is data). With ``repa_encoder_depth``
  set, :class:`LightningDiTREPA` adds a REPA projector (Linear-SiLU-Linear-SiLU-Linear, as REG's) on
  the output of block ``repa_encoder_depth`` (1-based). This is an option *beyond the paper*: the
  paper's LightningDiT runs have no representation alignment (diffusion.md §2). The projector is a
  sub-module of the network, so EMA, FSDP wrapping and checkpoints include it; its keys
  (``projectors.*``) are extra, so the plain LightningDiT keys stay loadable as they are.
* ``family="reg"``: `vfmvae.dit.SiTREG` (t = 1 is noise), projector after ``encoder_depth``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vfmvae.dit import LightningDiT, build_lightningdit, build_sit_reg
from vfmvae.dit.lightningdit import LIGHTNINGDIT_PRESETS
from vfmvae.dit.sit_reg import SIT_REG_PRESETS, build_projector

FAMILIES = ("lightningdit", "reg")

# Paper presets per family (diffusion.md §3.1).
DEFAULT_PRESETS = {"lightningdit": "LightningDiT-XL/1", "reg": "SiT-XL/1-REG"}


class LightningDiTREPA(LightningDiT):
    """LightningDiT plus REPA projectors on the output of block ``encoder_depth`` (1-based).

    ``forward(x, t, y)`` is the plain LightningDiT velocity (samplers see no difference);
    :meth:`forward_with_projections` returns ``(velocity (B, C, H, W), [ (B, N, z_dim) ... ])``.
    """

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

    def forward_with_projections(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        """Velocity and the projector outputs of the block-``encoder_depth`` tokens ``(B, N, D)``."""
        velocity, hidden = self(x, t, y, return_hidden=[self.encoder_depth - 1])
        tokens = hidden[self.encoder_depth - 1]
        return velocity, [proj(tokens) for proj in self.projectors]


def build_diffusion_network(
    family: str,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    repa_encoder_depth: int | None = None,
    repa_projector_dim: int = 2048,
    repa_z_dim: int = 768,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """The network of a run: ``family`` in ``FAMILIES``, ``preset`` a key of the family's preset dict.

    ``overrides``: shape fields of the preset's dataclass (e.g. ``{"input_size": 4}`` for the debug
    tokenizer's 4x4 latents; lists become tuples, as YAML has no tuples).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown diffusion network family {family!r}; choose one of {FAMILIES}")
    preset = preset or DEFAULT_PRESETS[family]
    presets = LIGHTNINGDIT_PRESETS if family == "lightningdit" else SIT_REG_PRESETS
    if preset not in presets:
        raise ValueError(f"unknown {family} preset {preset!r}; choose one of {sorted(presets)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(overrides or {}).items()}
    if family == "reg":
        if repa_encoder_depth is not None:
            raise ValueError(
                "repa_encoder_depth is for LightningDiT; REG's projector depth is the preset's "
                "`encoder_depth` (override it in network_overrides)"
            )
        return build_sit_reg(preset, activation_checkpointing=activation_checkpointing, **overrides)
    if repa_encoder_depth is None:
        return build_lightningdit(preset, activation_checkpointing=activation_checkpointing, **overrides)
    from dataclasses import replace

    config = replace(LIGHTNINGDIT_PRESETS[preset], **overrides)
    return LightningDiTREPA(
        config,
        encoder_depth=repa_encoder_depth,
        projector_dim=repa_projector_dim,
        z_dims=(repa_z_dim,),
        activation_checkpointing=activation_checkpointing,
    )


def latent_shape_of(net: nn.Module) -> tuple[int, int, int]:
    """``(C, h, w)`` of the normalised latents the network takes."""
    cfg = net.config
    return (cfg.in_channels, cfg.input_size, cfg.input_size)


def token_grid_of(net: nn.Module) -> int:
    """Side of the network's patch-token grid (16 for XL/1 on 16x16 latents)."""
    return net.config.input_size // net.config.patch_size


def alignment_dim_of(net: nn.Module) -> int | None:
    """Feature width the network's (first) projector predicts, or ``None`` without a projector."""
    if hasattr(net.config, "z_dims"):
        return int(net.config.z_dims[0])
    z_dims = getattr(net, "z_dims", None)
    return int(z_dims[0]) if z_dims else None
