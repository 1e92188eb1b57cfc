"""Adversarial objectives (docs/design.md, "Tokenizer stages and losses"): hinge, LSGAN and pix2pixHD feature matching.

- StyleGAN-T projected discriminator (all stages, weight 1): hinge loss on its `(B, L)` logits.
  D: mean ReLU(1 - D(real)) + mean ReLU(1 + D(fake)); G: -mean D(fake).
- Multi-scale PatchGAN (stage 3, weight 1): least squares (MSE) on the last output of each
  scale, targets 1 (real) / 0 (fake) for D and 1 for G, averaged over the scales.
- Feature matching (stage 3, weight 10): for each scale, L1 between the intermediate activations
  on fake and on (detached) real, each weighted (1 / num_scales) * (4 / num_intermediate).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# PatchGAN outputs: one list per scale, [feat_1, ..., feat_k, logits].
MultiScaleOutputs = Sequence[Sequence[torch.Tensor]]


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Discriminator hinge loss. Returns `{"d_hinge", "d_hinge_real", "d_hinge_fake"}`."""
    real = F.relu(1.0 - real_logits.float()).mean()
    fake = F.relu(1.0 + fake_logits.float()).mean()
    return {"d_hinge": real + fake, "d_hinge_real": real, "d_hinge_fake": fake}


def hinge_g_loss(fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Generator side of the hinge GAN: `{"g_hinge": -mean D(fake)}`."""
    return {"g_hinge": -fake_logits.float().mean()}


def _last_outputs(outputs: MultiScaleOutputs, who: str) -> list[torch.Tensor]:
    if len(outputs) == 0:
        raise ValueError(f"{who}: the PatchGAN returned no scales")
    return [scale[-1] for scale in outputs]


def lsgan_d_loss(real_outputs: MultiScaleOutputs, fake_outputs: MultiScaleOutputs) -> dict[str, torch.Tensor]:
    """Least-squares D loss averaged over scales: `{"d_lsgan", "d_lsgan_real", "d_lsgan_fake"}`."""
    reals = _last_outputs(real_outputs, "lsgan_d_loss")
    fakes = _last_outputs(fake_outputs, "lsgan_d_loss")
    if len(reals) != len(fakes):
        raise ValueError(f"lsgan_d_loss: {len(reals)} real scales vs {len(fakes)} fake scales")
    real = sum(F.mse_loss(r.float(), torch.ones_like(r, dtype=torch.float32)) for r in reals) / len(reals)
    fake = sum(F.mse_loss(f.float(), torch.zeros_like(f, dtype=torch.float32)) for f in fakes) / len(fakes)
    return {"d_lsgan": real + fake, "d_lsgan_real": real, "d_lsgan_fake": fake}


def lsgan_g_loss(fake_outputs: MultiScaleOutputs) -> dict[str, torch.Tensor]:
    """Least-squares G loss (target 1) averaged over scales: `{"g_lsgan"}`."""
    fakes = _last_outputs(fake_outputs, "lsgan_g_loss")
    value = sum(F.mse_loss(f.float(), torch.ones_like(f, dtype=torch.float32)) for f in fakes) / len(fakes)
    return {"g_lsgan": value}


def feature_matching_loss(real_outputs: MultiScaleOutputs, fake_outputs: MultiScaleOutputs) -> dict[str, torch.Tensor]:
    """pix2pixHD feature matching over the intermediate activations (the last output is excluded).

    `sum_scales sum_k (1/S) * (4/K) * L1(fake_k, real_k.detach())` with S scales and K
    intermediate activations per scale (4 for the 3-layer PatchGAN, so 4/K = 1).
    """
    if len(real_outputs) != len(fake_outputs) or len(real_outputs) == 0:
        raise ValueError(f"feature_matching_loss: {len(real_outputs)} real vs {len(fake_outputs)} fake scales")
    scale_weight = 1.0 / len(real_outputs)
    total = torch.zeros((), device=fake_outputs[0][0].device)
    for real_scale, fake_scale in zip(real_outputs, fake_outputs):
        if len(real_scale) != len(fake_scale):
            raise ValueError("feature_matching_loss: real and fake scales have different numbers of activations")
        feat_weight = 4.0 / max(len(real_scale) - 1, 1)
        for r, f in zip(real_scale[:-1], fake_scale[:-1]):
            total = total + scale_weight * feat_weight * F.l1_loss(f.float(), r.detach().float())
    return {"feature_matching": total}
