"""Flow-matching transport: paths, losses, ODE/SDE samplers and guidance (docs/design.md,
"Diffusion training" and "Sampling and guidance").

Everything numerical is written against a velocity function ``v(state, t, y)``; guidance wraps such a
function and the samplers never see a network. Two entry points take a network, and only through
`vfmvae.dit.interface.DiffusionNetwork`: `DiffusionObjective` (training terms) and `sample_latents`. Each model keeps its native time convention
(LightningDiT: t = 1 is data; REG: t = 1 is noise), passed explicitly everywhere.
"""

from .config import SAMPLER_PRESETS, TRANSPORT_PRESETS, SamplerConfig, TransportConfig, sample
from .guidance import ClassifierFreeGuidance, GuidanceInterval, lightningdit_doubled_cfg
from .losses import LightningDiTLoss, REGLoss, channel_cosine_loss, mean_flat, projection_loss
from .objective import DiffusionObjective
from .ode import euler_ode, heun_ode, integrate_ode
from .paths import LinearPath, TimeConvention, convert_time, noise_time, parse_convention
from .sampling import sample_latents, sampler_config, velocity_fn
from .sde import diffusion_coefficient, euler_maruyama_sde, score_from_velocity
from .state import cast_velocity_fn, reg_velocity_fn
from .timesteps import TimestepSampler, ode_time_grid, sde_time_grid, shift_time

__all__ = [
    "SAMPLER_PRESETS",
    "TRANSPORT_PRESETS",
    "SamplerConfig",
    "TransportConfig",
    "sample",
    "ClassifierFreeGuidance",
    "GuidanceInterval",
    "lightningdit_doubled_cfg",
    "DiffusionObjective",
    "LightningDiTLoss",
    "REGLoss",
    "channel_cosine_loss",
    "mean_flat",
    "projection_loss",
    "euler_ode",
    "heun_ode",
    "integrate_ode",
    "LinearPath",
    "TimeConvention",
    "convert_time",
    "noise_time",
    "parse_convention",
    "diffusion_coefficient",
    "euler_maruyama_sde",
    "score_from_velocity",
    "sample_latents",
    "sampler_config",
    "velocity_fn",
    "cast_velocity_fn",
    "reg_velocity_fn",
    "TimestepSampler",
    "ode_time_grid",
    "sde_time_grid",
    "shift_time",
]
