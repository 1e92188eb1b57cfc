"""Which loss terms each tokenizer stage uses, with what weight, and their sums (docs/design.md,
"Tokenizer stages and losses").

`TokenizerLossConfig` / `TOKENIZER_LOSS_PRESETS` (the weights), `ReconstructionLoss` (the pixel, LPIPS and
multi-scale terms), `generator_total` / `discriminator_total` (the weighted sums). Running the networks for
one D or G phase is `tokenizer_objective.TokenizerObjective` (docs/design.md, "Tokenizer stages and losses").


    G: main_rec + 1.0 * L_styleganT_G + w_patch * L_patch_G + w_fm * L_fm + lambda_vf * L_vf + w_kl * KL
    D: 1.0 * L_styleganT_D + w_patch * L_patch_D
    main_rec = w_l1 * L1 + w_l2 * L2 + w_lpips * LPIPS + w_ssim * (1 - SSIM) + sum_i 0.1 * L1_scale_i

| stage | L1 | LPIPS | SSIM | multi-scale | KL   | VF base (adaptive) | StyleGAN-T | PatchGAN | FM |
|-------|----|-------|------|-------------|------|--------------------|------------|----------|----|
| 0     | 1  | 10    | 0    | 5 x 0.1     | 1e-6 | 5                  | 1          | 0        | 0  |
| 1     | 1  | 10    | 0    | 5 x 0.1 (*) | 1e-6 | 1                  | 1          | 0        | 0  |
| 2     | 1  | 2     | 1    | 5 x 0.1 (*) | 0    | 0                  | 1          | 0        | 0  |
| 3     | 0  | 0     | 0    | 0           | 0    | 0                  | 1          | 1 (MSE)  | 10 |

(*) listed in every official config but gated by the global image counter (< 5 M images), so only
the first 5 M images of stage 0 see it.

These callables only combine named terms; `TokenizerObjective` runs the networks and draws the
equivariance sample, the LightningModule applies the safe-loss rule (`safe_loss.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from .equivariance import EQUIVARIANCE_PRESETS, EquivarianceConfig
from .lpips import LPIPS
from .pixel import MultiScalePixelLoss, MultiScalePixelLossConfig, l1_loss, l2_loss, ssim_loss
from .vf_alignment import VFLossConfig


@dataclass
class TokenizerLossConfig:
    """Loss weights of one training stage (runtime knobs; architecture lives in the tokenizer config)."""

    l1: float = 1.0
    l2: float = 0.0
    lpips: float = 10.0
    ssim: float = 0.0
    multiscale: MultiScalePixelLossConfig = field(default_factory=MultiScalePixelLossConfig)
    kl: float = 1e-6
    vf_base: float = 5.0
    adaptive_vf: bool = True
    vf: VFLossConfig = field(default_factory=VFLossConfig)
    stylegan_t: float = 1.0
    patchgan: float = 0.0
    feature_matching: float = 0.0
    equivariance: EquivarianceConfig = field(default_factory=EquivarianceConfig)

    @property
    def uses_multiscale(self) -> bool:
        return any(w != 0 for w in self.multiscale.weights)


TOKENIZER_LOSS_PRESETS: dict[str, TokenizerLossConfig] = {
    "stage0": TokenizerLossConfig(),
    "stage1": TokenizerLossConfig(vf_base=1.0),
    "stage2": TokenizerLossConfig(lpips=2.0, ssim=1.0, kl=0.0, vf_base=0.0, adaptive_vf=False),
    "stage3": TokenizerLossConfig(
        l1=0.0,
        lpips=0.0,
        multiscale=MultiScalePixelLossConfig(weights=[]),
        kl=0.0,
        vf_base=0.0,
        adaptive_vf=False,
        patchgan=1.0,
        feature_matching=10.0,
        equivariance=EQUIVARIANCE_PRESETS["off"],
    ),
    # 64 px CPU runs: stage-0 weights, EQ restricted to scales the 4x4 latent can take.
    "debug": TokenizerLossConfig(equivariance=EQUIVARIANCE_PRESETS["debug"]),
}


def get_loss_config(name: str, **overrides) -> TokenizerLossConfig:
    if name not in TOKENIZER_LOSS_PRESETS:
        raise KeyError(f"unknown tokenizer loss preset {name!r}; known: {sorted(TOKENIZER_LOSS_PRESETS)}")
    return replace(TOKENIZER_LOSS_PRESETS[name], **overrides)


class ReconstructionLoss(nn.Module):
    """`forward(pred, target, multiscale_outputs, global_nimg) -> dict` of named terms and `"rec"`.

    pred/target: `(B, 3, H, W)` in [-1, 1] (target already EQ-transformed). multiscale_outputs:
    the decoder's intermediate images, largest first (list, or dict {side: image}). Terms with
    zero weight are not computed. `"rec"` is `main_rec_loss`, the reference for the adaptive VF
    weight.
    """

    def __init__(self, config: TokenizerLossConfig, lpips: LPIPS | None = None):
        super().__init__()
        self.config = config
        if config.lpips > 0 and lpips is None:
            raise ValueError("ReconstructionLoss: the config weights LPIPS but no LPIPS module was given")
        self.lpips = lpips if config.lpips > 0 else None
        self.multiscale = MultiScalePixelLoss(config.multiscale) if config.uses_multiscale else None

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        multiscale_outputs: Sequence[torch.Tensor] | Mapping[int, torch.Tensor] = (),
        global_nimg: int = 0,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        rec = pred.new_zeros((), dtype=torch.float32)
        if cfg.l1 > 0:
            terms["l1"] = l1_loss(pred, target)
            rec = rec + cfg.l1 * terms["l1"]
        if cfg.l2 > 0:
            terms["l2"] = l2_loss(pred, target)
            rec = rec + cfg.l2 * terms["l2"]
        if self.lpips is not None:
            terms["lpips"] = self.lpips.loss(pred, target)
            rec = rec + cfg.lpips * terms["lpips"]
        if cfg.ssim > 0:
            terms["ssim"] = ssim_loss(pred, target)
            rec = rec + cfg.ssim * terms["ssim"]
        if self.multiscale is not None:
            outputs = (
                list(multiscale_outputs.values())
                if isinstance(multiscale_outputs, Mapping)
                else list(multiscale_outputs)
            )
            terms.update(self.multiscale(outputs, target, global_nimg))
            rec = rec + terms["multiscale_l1"]  # already weighted (0.1 each) and gated
        terms["rec"] = rec
        return terms


def generator_total(
    terms: Mapping[str, torch.Tensor], config: TokenizerLossConfig, vf_weight: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Weighted G objective from named terms (`rec`, `g_hinge`, `g_lsgan`, `feature_matching`, `vf`, `kl`).

    `vf_weight` is the adaptive lambda (or the plain base weight when not adaptive). Missing terms count as 0.
    """
    if "rec" not in terms:
        raise KeyError("generator_total: the reconstruction total 'rec' is missing (use ReconstructionLoss)")
    total = terms["rec"]
    weighted = (
        ("g_hinge", config.stylegan_t),
        ("g_lsgan", config.patchgan),
        ("feature_matching", config.feature_matching),
        ("kl", config.kl),
    )
    for name, weight in weighted:
        if weight != 0 and name in terms:
            total = total + weight * terms[name]
    if "vf" in terms:
        total = total + vf_weight * terms["vf"]
    return total


def discriminator_total(terms: Mapping[str, torch.Tensor], config: TokenizerLossConfig) -> torch.Tensor:
    """Weighted D objective from `d_hinge` (StyleGAN-T) and `d_lsgan` (PatchGAN)."""
    parts = [config.stylegan_t * terms["d_hinge"]] if config.stylegan_t != 0 and "d_hinge" in terms else []
    if config.patchgan != 0 and "d_lsgan" in terms:
        parts.append(config.patchgan * terms["d_lsgan"])
    if not parts:
        raise KeyError(f"discriminator_total: no active D term among {sorted(terms)}")
    return sum(parts)
