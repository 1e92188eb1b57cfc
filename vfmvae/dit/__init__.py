"""Diffusion transformers: LightningDiT and REG SiT (diffusion spec §3.1), plus official converters.

Public entry points:
* `LightningDiT`, `LightningDiTConfig`, `LIGHTNINGDIT_PRESETS`, `build_lightningdit` —
  `model(x, t, y)` -> velocity, t = 1 is data.
* `SiTREG`, `SiTREGConfig`, `SIT_REG_PRESETS`, `build_sit_reg`, `REGOutput` —
  `model(x, t, y, cls_token)` -> `REGOutput(velocity, projections, cls_velocity)`, t = 1 is noise.
* `from_official_lightningdit(state_dict, kwargs)`, `from_official_reg(state_dict, kwargs)`,
  `unwrap_checkpoint(path_or_dict)` — official key names / checkpoint files -> our modules.
"""

from vfmvae.dit.convert import from_official_lightningdit, from_official_reg, unwrap_checkpoint
from vfmvae.dit.lightningdit import (
    LIGHTNINGDIT_PRESETS,
    LightningDiT,
    LightningDiTBlock,
    LightningDiTConfig,
    build_lightningdit,
)
from vfmvae.dit.sit_reg import SIT_REG_PRESETS, REGOutput, SiTREG, SiTREGBlock, SiTREGConfig, build_sit_reg

__all__ = [
    "LIGHTNINGDIT_PRESETS",
    "LightningDiT",
    "LightningDiTBlock",
    "LightningDiTConfig",
    "build_lightningdit",
    "SIT_REG_PRESETS",
    "REGOutput",
    "SiTREG",
    "SiTREGBlock",
    "SiTREGConfig",
    "build_sit_reg",
    "from_official_lightningdit",
    "from_official_reg",
    "unwrap_checkpoint",
]
