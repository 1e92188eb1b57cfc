"""One G phase and one D phase of tokenizer training on the networks (docs/design.md, "Tokenizer
stages and losses").

The weights and sums per stage are `stage_terms.py`; this file runs the tokenizer and discriminators.

`TokenizerObjective` runs the tokenizer and the discriminators on a batch and returns the named
terms plus the weighted total; the LightningModule owns optimisers, `requires_grad` toggling,
the safe-loss guard, backward and logging. Each phase draws its own equivariance sample (the
official D and G phases of one iteration sample independently).

G phase (per micro-batch, images in [0, 1]):
  s ~ EQ sampler; encoder input = transform_input(img, s); posterior, VFM tokens = encode(...);
  z = sample; KL and VF on the untransformed z; decode(transform_latent(z, s)) -> image and the
  multi-scale outputs; ground truth = transform_target(img, s) in [-1, 1]; reconstruction terms;
  hinge G loss on the projected D; PatchGAN LSGAN + feature matching (real features from the same
  D, detached); lambda_vf adaptive from the gradient norms at the head's last layer.
D phase: the same forward without gradients, then the D losses on (EQ-transformed real, fake).
A conditional decoder (docs/conditional.md) gets the batch's `condition` (`text=` or `class_labels=`) in
both phases; it does not depend on the equivariance draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .adversarial import feature_matching_loss, hinge_d_loss, hinge_g_loss, lsgan_d_loss, lsgan_g_loss
from .equivariance import EquivarianceSample, EquivarianceSampler, transform_input, transform_latent, transform_target
from .kl import kl_divergence
from .lpips import LPIPS
from .stage_terms import ReconstructionLoss, TokenizerLossConfig, discriminator_total, generator_total
from .vf_alignment import adaptive_vf_weight, vf_loss_from_latent


@dataclass
class PhaseResult:
    """`total`: scalar to backpropagate; `terms`: named terms (for the guard and logging); `eq`: the EQ draw."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    eq: EquivarianceSample

    def scalars(self, prefix: str) -> dict[str, torch.Tensor]:
        """Detached float32 scalar terms and the total as ``{f"{prefix}/{name}": value}`` (for logging)."""
        out = {f"{prefix}/{k}": v.detach().float() for k, v in self.terms.items() if v.numel() == 1}
        out[f"{prefix}/total"] = self.total.detach().float()
        return out


class TokenizerObjective:
    """Stage objective over a `VFMVAE` (`encode(img, return_features=True)`, `decode(z, return_multiscale=True)`,
    `head.vf_projection`, `head.last_layer_weight`, `cfg.vfm_layers`).

    A plain object, not an `nn.Module`: it only *references* the LPIPS module and the
    discriminators, which the LightningModule registers as its own children (so they move with it
    and appear once in its state dict).

    Args:
        config: stage weights (`TOKENIZER_LOSS_PRESETS`).
        resolution: training image size (validates the EQ scale set).
        lpips: `LPIPS` module (needed when `config.lpips > 0`).
        projected_d / patchgan: discriminators (needed when their weights are non-zero).
        seed: EQ sampler seed; use `seed * world_size + rank`.
    """

    def __init__(
        self,
        config: TokenizerLossConfig,
        resolution: int,
        lpips: LPIPS | None = None,
        projected_d: nn.Module | None = None,
        patchgan: nn.Module | None = None,
        seed: int = 0,
    ):
        self.config = config
        self.reconstruction = ReconstructionLoss(config, lpips)
        self.sampler = EquivarianceSampler(config.equivariance, resolution, seed)
        if config.stylegan_t > 0 and projected_d is None:
            raise ValueError("TokenizerObjective: StyleGAN-T weight > 0 but no projected discriminator given")
        if (config.patchgan > 0 or config.feature_matching > 0) and patchgan is None:
            raise ValueError("TokenizerObjective: PatchGAN / feature-matching weight > 0 but no PatchGAN given")
        self.projected_d = projected_d
        self.patchgan = patchgan

    def _forward_tokenizer(
        self,
        model: nn.Module,
        images01: torch.Tensor,
        eq: EquivarianceSample,
        condition: Mapping[str, Any] | None = None,
    ):
        posterior, feats = model.encode(transform_input(images01, eq), return_features=True)
        z = posterior.sample()
        decoded = model.decode(transform_latent(z, eq), return_multiscale=True, **(condition or {}))
        target = transform_target(images01, eq, self.config.equivariance.interpolation) * 2.0 - 1.0
        return posterior, feats, z, decoded, target

    def _vf_terms(self, model: nn.Module, z: torch.Tensor, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        projection = getattr(model.head, "vf_projection", None)
        if projection is None:
            raise ValueError(
                "VF loss weight > 0 but the tokenizer has no VF projection (build it with use_vf_projection=True)"
            )
        layers = list(model.cfg.vfm_layers)
        if -1 not in layers:
            raise ValueError(f"VF loss needs the VFM's final post-LN layer (-1) among vfm_layers {layers}")
        return vf_loss_from_latent(z, feats[layers.index(-1)], projection, self.config.vf)

    def generator_phase(
        self,
        model: nn.Module,
        images01: torch.Tensor,
        global_nimg: int,
        training: bool = True,
        condition: Mapping[str, Any] | None = None,
    ) -> PhaseResult:
        """G phase on `(B, 3, H, W)` images in [0, 1]. `global_nimg`: images seen over all stages;
        `condition`: decoder condition kwargs of a conditional tokenizer (`text=` / `class_labels=`)."""
        cfg = self.config
        eq = self.sampler.sample(training)
        posterior, feats, z, decoded, target = self._forward_tokenizer(model, images01, eq, condition)
        terms = self.reconstruction(decoded.image, target, decoded.multiscale, global_nimg)
        if cfg.kl > 0:
            terms["kl"] = kl_divergence(posterior.mean, posterior.logvar)["kl"]
        if cfg.vf_base > 0:
            terms.update(self._vf_terms(model, z, feats))
        if cfg.stylegan_t > 0:
            terms.update(hinge_g_loss(self.projected_d(decoded.image)))
        if cfg.patchgan > 0 or cfg.feature_matching > 0:
            fake_out = self.patchgan(decoded.image)
            terms.update(lsgan_g_loss(fake_out))
            if cfg.feature_matching > 0:
                terms.update(feature_matching_loss(self.patchgan(target), fake_out))
        vf_weight: torch.Tensor | float = 0.0
        if "vf" in terms:
            if cfg.adaptive_vf:
                vf_weight = adaptive_vf_weight(terms["rec"], terms["vf"], model.head.last_layer_weight, cfg.vf_base)
            else:
                vf_weight = cfg.vf_base
            terms["vf_weight"] = torch.as_tensor(vf_weight, dtype=torch.float32).detach()
        return PhaseResult(generator_total(terms, cfg, vf_weight), terms, eq)

    def discriminator_phase(
        self,
        model: nn.Module,
        images01: torch.Tensor,
        training: bool = True,
        condition: Mapping[str, Any] | None = None,
    ) -> PhaseResult:
        """D phase: tokenizer forward without gradients (new EQ draw), D losses on real vs fake."""
        cfg = self.config
        eq = self.sampler.sample(training)
        with torch.no_grad():
            _, _, _, decoded, target = self._forward_tokenizer(model, images01, eq, condition)
        fake = decoded.image.detach()
        terms: dict[str, torch.Tensor] = {}
        if cfg.stylegan_t > 0:
            terms.update(hinge_d_loss(self.projected_d(target), self.projected_d(fake)))
        if cfg.patchgan > 0:
            terms.update(lsgan_d_loss(self.patchgan(target), self.patchgan(fake)))
        return PhaseResult(discriminator_total(terms, cfg), terms, eq)

    def state_dict_extra(self) -> dict:
        """EQ sampler RNG state, for exact resume (store it in the checkpoint next to the module state)."""
        return {"eq_sampler": self.sampler.state_dict()}

    def load_state_dict_extra(self, state: dict) -> None:
        self.sampler.load_state_dict(state["eq_sampler"])
