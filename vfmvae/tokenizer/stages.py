"""The paper's four tokenizer stages as data (docs/design.md, "Tokenizer stages and losses").

| stage | name                | images | lr   | loss preset | trainable generator modules                       |
|-------|---------------------|--------|------|-------------|---------------------------------------------------|
| 0     | strong alignment    | 20 M   | 1e-4 | stage0      | head (+ VF projection), decoder                    |
| 1     | weak alignment      | 20 M   | 1e-4 | stage1      | head (+ VF projection), decoder                    |
| 2     | SSIM fine-tuning    | 1 M    | 5e-5 | stage2      | decoder (lift, mapping, synthesis); latent fixed   |
| 3     | PatchGAN fine-tuning| 3 M    | 5e-5 | stage3      | decoder.synthesis.blocks at 64/128/256 px only     |

Stage 3 deviates from the shipped code on purpose (docs/design.md, "Deviations from the official code"):
the official `train_the_second_half_decoder` matches module names that do not exist (`synthesis.b64` ...)
and so trains nothing; we train the evident intent, the last three synthesis blocks (31,827,994
parameters in the paper preset). The 64 px latent adapter (`decoder.synthesis.fusion.3`, which feeds
the latent into block 3) stays **frozen**: the official rule means "the second half of the decoder",
the synthesis blocks above 32 px, and its adapter clause (`z_convs.{i}` for `i > 32`) compares the
fusion *block indices* (0-3) with a resolution, so even with existing names it selects no adapter.
Keeping every adapter frozen also keeps the decoder's latent interface (how a latent enters the
synthesis network) exactly as stage 2 left it; only the upsampling half adapts to the PatchGAN.
The frozen VFM is never trainable; discriminators are trained by their own optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from vfmvae.losses.safe_loss import SafeLossConfig, TokenizerSafeLossRule


@dataclass(frozen=True)
class StageSpec:
    """Facts of one paper stage."""

    name: str
    num_images: int
    lr: float
    loss_preset: str
    train_mode: str  # `VFMVAE.trainable_modules` mode
    uses_vf_projection: bool  # the 1x1 `linear_proj` exists only while the VF loss is on


STAGES: dict[int, StageSpec] = {
    0: StageSpec("strong_alignment", 20_000_000, 1e-4, "stage0", "train_all", True),
    1: StageSpec("weak_alignment", 20_000_000, 1e-4, "stage1", "train_all", True),
    2: StageSpec("ssim_fine_tuning", 1_000_000, 5e-5, "stage2", "train_decoder", False),
    3: StageSpec("patchgan_fine_tuning", 3_000_000, 5e-5, "stage3", "train_second_half_decoder", False),
}


def get_stage(stage: int) -> StageSpec:
    if stage not in STAGES:
        raise ValueError(f"unknown tokenizer stage {stage!r}; the paper has stages {sorted(STAGES)}")
    return STAGES[stage]


def steps_for_images(num_images: int, global_batch_size: int) -> int:
    """Iterations (one D + one G update each) that cover `num_images`: ceil(images / batch)."""
    return math.ceil(num_images / global_batch_size)


def trainable_generator_modules(tokenizer: nn.Module, stage: int) -> dict[str, nn.Module]:
    """Explicit module list of the stage, keyed by the dotted path inside the tokenizer.

    Stage 0-1: `head`, `decoder`; stage 2: `decoder`; stage 3: `decoder.synthesis.blocks.{n-3,n-2,n-1}`
    (the 64/128/256 px blocks at the paper's 6 blocks). Delegates to `VFMVAE.trainable_modules`.
    """
    modules = dict(tokenizer.trainable_modules(get_stage(stage).train_mode))
    if any(name == "vfm" or name.startswith("vfm.") for name in modules):
        raise RuntimeError("the frozen VFM must never be in a stage's trainable set")
    return modules


def set_trainable(tokenizer: nn.Module, stage: int) -> dict[str, nn.Module]:
    """Freeze every tokenizer parameter, then unfreeze exactly the stage's modules; returns them.

    Parameters are toggled one by one (never `requires_grad_(True)` on a parent that holds the VFM).
    """
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    modules = trainable_generator_modules(tokenizer, stage)
    for module in modules.values():
        for p in module.parameters():
            p.requires_grad_(True)
    if tokenizer.vfm is not None:
        tokenizer.vfm.requires_grad_(False)
    return modules


class TokenizerStepRule:
    """Guard rule of one phase: non-finite terms are always unsafe; the official rule applies on top.

    The official rule (`vfmvae.losses.TokenizerSafeLossRule`) checks only after the first
    50k images of a run and ignores non-finite KL/VF values; a NaN loss would then reach the weights
    through `nan_to_num`-ed gradients. We additionally refuse any non-finite term at any time, so an
    injected NaN is skipped (no parameter change) and counted from the first step.
    """

    def __init__(self, phase: str, config: SafeLossConfig | None = None):
        self.official = TokenizerSafeLossRule(phase, config or SafeLossConfig())

    def set_run_nimg(self, run_nimg: int) -> None:
        self.official.set_run_nimg(run_nimg)

    def __call__(self, terms: Mapping[str, float]) -> list[str]:
        bad = {name for name, value in terms.items() if not math.isfinite(value)}
        bad.update(self.official(terms))
        return sorted(bad)

    def accept(self, terms: Mapping[str, float]) -> None:
        self.official.accept(terms)

    def state_dict(self) -> dict[str, Any]:
        return self.official.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.official.load_state_dict(state)


__all__ = [
    "STAGES",
    "StageSpec",
    "TokenizerStepRule",
    "get_stage",
    "set_trainable",
    "steps_for_images",
    "trainable_generator_modules",
]
