"""Diffusion networks behind one interface (docs/design.md, "Diffusion networks and the network interface").

Public entry points:
* `DiffusionNetwork`, `ConditionSpec`, `TrainingState`, `NetworkOutput`, `SamplerPresets`
  (`vfmvae.dit.interface`): what every network implements and what the rest of the code may call.
* `build_diffusion_network(family, preset, overrides, **options)`, `register_network`, `network_family`,
  `network_families`, `load_official_network` (`vfmvae.dit.registry`): named families.
* `LightningDiT`, `LightningDiTConfig`, `LIGHTNINGDIT_PRESETS`, `build_lightningdit`, `LightningDiTREPA` —
  `model(x, t, y)` -> velocity, t = 1 is data.
* `SiTREG`, `SiTREGConfig`, `SIT_REG_PRESETS`, `build_sit_reg`, `REGOutput` —
  `model(x, t, y, cls_token)` -> `REGOutput(velocity, projections, cls_velocity)`, t = 1 is noise.
* `from_official_lightningdit(state_dict, kwargs)`, `from_official_reg(state_dict, kwargs)`,
  `unwrap_checkpoint(path_or_dict)` — official key names / checkpoint files -> our modules.
* `ClassLabels`, `class_labels` (`vfmvae.dit.conditions`): the class-id condition.
"""

from vfmvae.dit.conditions import ClassLabels, class_labels
from vfmvae.dit.convert import from_official_lightningdit, from_official_reg, unwrap_checkpoint
from vfmvae.dit.interface import (
    ConditionSpec,
    DiffusionNetwork,
    NetworkOutput,
    SamplerPresets,
    TrainingState,
    check_network,
)
from vfmvae.dit.lightningdit import (
    LIGHTNINGDIT_PRESETS,
    LightningDiT,
    LightningDiTBlock,
    LightningDiTConfig,
    build_lightningdit,
)
from vfmvae.dit.lightningdit_repa import LightningDiTREPA
from vfmvae.dit.registry import (
    NetworkFamily,
    build_diffusion_network,
    build_from_hparams,
    load_official_network,
    network_families,
    network_family,
    register_network,
)
from vfmvae.dit.sit_reg import SIT_REG_PRESETS, REGOutput, SiTREG, SiTREGBlock, SiTREGConfig, build_sit_reg
from vfmvae.dit.sit_reg_family import REG_FAMILY

__all__ = [
    "ClassLabels",
    "ConditionSpec",
    "DiffusionNetwork",
    "NetworkFamily",
    "NetworkOutput",
    "REG_FAMILY",
    "SamplerPresets",
    "TrainingState",
    "build_diffusion_network",
    "build_from_hparams",
    "check_network",
    "class_labels",
    "load_official_network",
    "network_families",
    "network_family",
    "register_network",
    "LIGHTNINGDIT_PRESETS",
    "LightningDiT",
    "LightningDiTBlock",
    "LightningDiTConfig",
    "LightningDiTREPA",
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
