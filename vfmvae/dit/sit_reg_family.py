"""The ``reg`` family of the network registry: REG SiT builder and the paper run's official kwargs."""

from __future__ import annotations

from vfmvae.dit.convert import from_official_reg
from vfmvae.dit.registry import NetworkFamily, register_network
from vfmvae.dit.sit_reg import SIT_REG_PRESETS, SiTREG, build_sit_reg

# Constructor kwargs of the paper's REG run, for released official files (docs/design.md, "Diffusion networks and the network interface").
PAPER_REG_KWARGS = dict(
    input_size=16,
    patch_size=1,
    in_channels=32,
    encoder_depth=8,
    z_dims=[768],
    qk_norm=True,
    projector_dim=2048,
    cls_token_dim=768,
    path_type="linear",
)


def build_reg_network(
    preset: str, overrides, *, activation_checkpointing: bool = False, repa_encoder_depth: int | None = None, **_
) -> SiTREG:
    """The ``reg`` family builder (REPA options of LightningDiT are refused: REG has its own projector)."""
    if repa_encoder_depth is not None:
        raise ValueError(
            "repa_encoder_depth is for LightningDiT; REG's projector depth is the preset's "
            "`encoder_depth` (override it in network_overrides)"
        )
    return build_sit_reg(preset, activation_checkpointing=activation_checkpointing, **overrides)


REG_FAMILY = register_network(
    NetworkFamily(
        name="reg",
        presets=SIT_REG_PRESETS,
        default_preset="SiT-XL/1-REG",
        build=build_reg_network,
        from_official=from_official_reg,
        official_kwargs=PAPER_REG_KWARGS,
    )
)
