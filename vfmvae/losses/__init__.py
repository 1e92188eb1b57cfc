"""Tokenizer objectives (docs/design.md, "Tokenizer stages and losses"). Every loss returns a dict of named terms.

Public entry points:
    kl_divergence                                   KL of the diagonal Gaussian
    l1_loss, l2_loss, ssim_loss, MultiScalePixelLoss pixel terms
    LPIPS                                           LPIPS-VGG
    vf_loss, vf_loss_from_latent, adaptive_vf_weight VF alignment
    EquivarianceSampler, transform_*                equivariance regularisation
    hinge_*, lsgan_*, feature_matching_loss         adversarial terms
    safe_loss_rule, TokenizerSafeLossRule           safe-loss rule; the latter plugs into utils.guard
    TokenizerLossConfig, TOKENIZER_LOSS_PRESETS,
    ReconstructionLoss, generator_total,
    discriminator_total                             per-stage objectives
    TokenizerObjective                              one G / D phase on a VFMVAE + discriminators
"""

from .adversarial import feature_matching_loss, hinge_d_loss, hinge_g_loss, lsgan_d_loss, lsgan_g_loss
from .equivariance import (
    EQUIVARIANCE_PRESETS,
    EquivarianceConfig,
    EquivarianceSample,
    EquivarianceSampler,
    transform_input,
    transform_latent,
    transform_target,
    validate_scales,
)
from .kl import kl_divergence, split_moments
from .lpips import LPIPS
from .pixel import MultiScalePixelLoss, MultiScalePixelLossConfig, l1_loss, l2_loss, resize_like_vfm, ssim_loss
from .safe_loss import (
    SafeLossConfig,
    SafeLossDecision,
    TokenizerSafeLossRule,
    check_discriminator_terms,
    check_generator_terms,
    safe_loss_rule,
)
from .stage_terms import (
    TOKENIZER_LOSS_PRESETS,
    ReconstructionLoss,
    TokenizerLossConfig,
    discriminator_total,
    generator_total,
    get_loss_config,
)
from .tokenizer_objective import PhaseResult, TokenizerObjective
from .vf_alignment import (
    VF_BASE_WEIGHTS,
    VFLossConfig,
    adaptive_vf_weight,
    tokens_to_latent_grid,
    vf_loss,
    vf_loss_from_latent,
)

__all__ = [
    "EQUIVARIANCE_PRESETS",
    "LPIPS",
    "TOKENIZER_LOSS_PRESETS",
    "VF_BASE_WEIGHTS",
    "EquivarianceConfig",
    "EquivarianceSample",
    "EquivarianceSampler",
    "MultiScalePixelLoss",
    "MultiScalePixelLossConfig",
    "ReconstructionLoss",
    "SafeLossConfig",
    "SafeLossDecision",
    "TokenizerLossConfig",
    "TokenizerObjective",
    "PhaseResult",
    "TokenizerSafeLossRule",
    "VFLossConfig",
    "adaptive_vf_weight",
    "check_discriminator_terms",
    "check_generator_terms",
    "discriminator_total",
    "feature_matching_loss",
    "generator_total",
    "get_loss_config",
    "hinge_d_loss",
    "hinge_g_loss",
    "kl_divergence",
    "l1_loss",
    "l2_loss",
    "lsgan_d_loss",
    "lsgan_g_loss",
    "resize_like_vfm",
    "safe_loss_rule",
    "split_moments",
    "ssim_loss",
    "tokens_to_latent_grid",
    "transform_input",
    "transform_latent",
    "transform_target",
    "validate_scales",
    "vf_loss",
    "vf_loss_from_latent",
]
