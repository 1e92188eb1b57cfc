"""The networks of one tokenizer training stage, built from presets and seeds (docs/design.md,
"Tokenizer stages and losses").

`build_stage_networks` returns the tokenizer (frozen VFM inside), the projected discriminator (frozen
DINO ViT-S + trainable heads), the PatchGAN (stage 3), LPIPS (frozen VGG16), the stage's loss weights,
the trainable generator modules and the `TokenizerObjective` over them (docs/design.md, "Tokenizer stages and losses").

Each network is built under its own seed (`seeded`: a private RNG, the global one is left untouched):
tokenizer and VFM ``seed``, projected discriminator ``seed + 1``, PatchGAN ``seed + 2``, LPIPS
``seed + 3``, the text tower of a text-conditional tokenizer ``seed + 4`` (docs/conditional.md). So a random frozen network (tests, the CPU demo) is the same in every run and every
stage, whatever else the stage builds, and the stage hand-off's hash check accepts it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn

from vfmvae.losses import EQUIVARIANCE_PRESETS, LPIPS, TokenizerLossConfig, TokenizerObjective, get_loss_config
from vfmvae.vfm import build_vfm, check_equivariance_supported

from .conditioning import BatchConditioner
from .config import get_config
from .discriminators import (
    PATCHGAN_PRESETS,
    PROJECTED_DISCRIMINATOR_PRESETS,
    MultiScalePatchGAN,
    ProjectedDiscriminator,
)
from .model import VFMVAE
from .stages import StageSpec, get_stage, set_trainable

T = TypeVar("T")
DEMO_HINT = "The CPU demo needs no files: CONFIG=configs/tokenizer/demo.yaml make train-tokenizer"


@dataclass
class StageNetworks:
    """What one stage trains and evaluates with; `g_modules` keys are LightningModule paths (``tokenizer.*``)."""

    loss_config: TokenizerLossConfig
    tokenizer: VFMVAE
    projected_d: ProjectedDiscriminator | None
    patchgan: MultiScalePatchGAN | None
    lpips: LPIPS | None
    g_modules: dict[str, nn.Module]
    objective: TokenizerObjective  # the stage's G and D phases over these networks
    conditioner: BatchConditioner | None = None  # batch -> decoder condition (conditional tokenizers)


def seeded(seed: int, build: Callable[[], T]) -> T:
    """`build()` under a private RNG seeded with `seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def stage_loss_config(
    spec: StageSpec, overrides: dict[str, Any] | None, equivariance: str | None
) -> TokenizerLossConfig:
    """The stage's loss preset with scalar ``overrides`` and an optional equivariance preset by name."""
    overrides = dict(overrides or {})
    if equivariance is not None:
        if equivariance not in EQUIVARIANCE_PRESETS:
            raise ValueError(
                f"unknown equivariance preset {equivariance!r}; choose one of {sorted(EQUIVARIANCE_PRESETS)}"
            )
        overrides["equivariance"] = EQUIVARIANCE_PRESETS[equivariance]
    try:
        return get_loss_config(spec.loss_preset, **overrides)
    except TypeError as e:
        raise ValueError(f"loss_overrides {sorted(overrides)}: {e}") from e


def require_weights(what: str, preset: str, path: str | None, option: str) -> None:
    """A full-size frozen network without a weights file is an error (only ``debug*`` presets may be random)."""
    if path is None and not preset.startswith("debug"):
        raise ValueError(
            f"the frozen {what} ({preset!r}) has no weights: set {option} to a local file/folder "
            f"(a random frozen network is only meaningful for debug presets; allow_random_frozen=true "
            f"forces it). {DEMO_HINT}"
        )


def _projected_d(loss: TokenizerLossConfig, preset: str, weights: str | None) -> ProjectedDiscriminator | None:
    if loss.stylegan_t <= 0:
        return None
    if preset not in PROJECTED_DISCRIMINATOR_PRESETS:
        raise ValueError(
            f"unknown discriminator preset {preset!r}; choose one of {sorted(PROJECTED_DISCRIMINATOR_PRESETS)}"
        )
    return ProjectedDiscriminator(PROJECTED_DISCRIMINATOR_PRESETS[preset], vit_weights_path=weights)


def build_stage_networks(stage: int, args: Mapping[str, Any]) -> StageNetworks:
    """Build the stage's networks and objective (see the module docstring).

    ``args``: `TokenizerModule`'s hyper-parameters (``tokenizer``, ``tokenizer_overrides``, ``vfm_pretrained``,
    ``vfm_config``, ``loss_overrides``, ``equivariance``, ``discriminator``, ``dino_pretrained``, ``patchgan``,
    ``vgg_path``, ``lpips_random_backbone``, ``seed``, ``allow_random_frozen``; see its docstring).
    """
    spec = get_stage(stage)
    seed, vfm_pretrained, dino = int(args["seed"]), args["vfm_pretrained"], args["dino_pretrained"]
    loss = stage_loss_config(spec, args["loss_overrides"], args["equivariance"])
    cfg = get_config(args["tokenizer"], **(args["tokenizer_overrides"] or {}))
    cfg = replace(cfg, use_vf_projection=spec.uses_vf_projection and loss.vf_base > 0)
    if not args["allow_random_frozen"]:
        require_weights("VFM", cfg.vfm_name, vfm_pretrained, "model.vfm_pretrained (make: VFM_PATH)")
        if loss.stylegan_t > 0:
            require_weights(
                "discriminator DINO ViT", args["discriminator"], dino, "model.dino_pretrained (make: DINO_PATH)"
            )
    vfm = lambda: build_vfm(cfg.vfm_name, pretrained=vfm_pretrained, config=args["vfm_config"])  # noqa: E731
    text, text_path, conditioner = _text_side(cfg, args, seed)
    model = seeded(seed, lambda: VFMVAE(cfg, vfm=seeded(seed, vfm), text_encoder=text, text_pretrained=text_path))
    # A VFM without dynamic resolution (MAE) cannot take the input branch's resized images (official README).
    check_equivariance_supported(model.vfm, loss.equivariance)
    # The losses resize ground truth with the VFM's interpolation (official loss.py: VFM2INTERPOLATION by name).
    interp = model.vfm.config.interpolation
    loss = replace(
        loss,
        equivariance=replace(loss.equivariance, interpolation=interp),
        multiscale=replace(loss.multiscale, interpolation=interp),
    )
    projected_d = seeded(seed + 1, lambda: _projected_d(loss, args["discriminator"], dino))
    uses_patchgan = loss.patchgan > 0 or loss.feature_matching > 0
    pgan = seeded(seed + 2, lambda: MultiScalePatchGAN(PATCHGAN_PRESETS[args["patchgan"]])) if uses_patchgan else None
    lpips = None
    if loss.lpips > 0 or args["vgg_path"] or args["lpips_random_backbone"]:
        lpips = seeded(seed + 3, lambda: LPIPS(args["vgg_path"], random_backbone=args["lpips_random_backbone"]))
    model.vfm_pretrained = vfm_pretrained  # recorded by save_pretrained
    g_modules = {f"tokenizer.{k}": m for k, m in set_trainable(model, stage).items()}
    objective = TokenizerObjective(
        loss, cfg.img_resolution, lpips=lpips, projected_d=projected_d, patchgan=pgan, seed=seed
    )
    return StageNetworks(loss, model, projected_d, pgan, lpips, g_modules, objective, conditioner)


def _text_side(cfg, args: Mapping[str, Any], seed: int):
    """(text tower, its folder, batch conditioner) of a conditional tokenizer; the tower and the Hugging Face
    tokenizer default to the VFM folder (a SigLIP2 folder holds the vision tower, the text tower and the tokenizer)."""
    if cfg.label_type is None:
        return None, None, None
    if not cfg.uses_text:
        return None, None, BatchConditioner(cfg)
    from vfmvae.vfm.siglip2_text import build_text_tower

    path = args.get("text_pretrained") or args["vfm_pretrained"]
    if not args["allow_random_frozen"]:
        require_weights("text tower", cfg.text_encoder, path, "model.text_pretrained (default: model.vfm_pretrained)")
    dtype = (args["vfm_config"] or {}).get("compute_dtype")
    text = seeded(seed + 4, lambda: build_text_tower(cfg.text_encoder, pretrained=path, compute_dtype=dtype))
    tokenizer_path = args.get("text_tokenizer") or path
    if tokenizer_path is None:
        raise ValueError(
            f"a {cfg.label_type!r} tokenizer needs the text tower's tokenizer: set model.text_tokenizer to a local "
            "Hugging Face tokenizer folder (default: model.text_pretrained / model.vfm_pretrained)"
        )
    return text, path, BatchConditioner(cfg, tokenizer_path)  # loaded at the first batch


__all__ = ["StageNetworks", "build_stage_networks", "require_weights", "seeded", "stage_loss_config"]
