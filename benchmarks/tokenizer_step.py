"""The numerical tokenizer training iteration: one G phase and one D phase (docs/design.md, "Tokenizer stages and losses").

G phase: frozen VFM forward under `no_grad` (SigLIP2 at 2x resolution) -> latent head -> z sample
-> decoder with multi-scale outputs -> reconstruction terms (L1, LPIPS, multi-scale L1), KL, VF
loss with its adaptive weight (an extra `autograd.grad` pair), projected-D hinge G loss ->
backward -> Adam step. D phase: tokenizer forward without gradients -> D hinge on (real, fake) ->
backward into the D heads -> Adam step. Then the EMA update of head + decoder. The discriminator
heads are frozen during the G phase and the tokenizer is not part of the D graph, as in the
official loop. The terms come from `vfmvae.losses.TokenizerObjective`, so this measures the
project's real numerics; LPIPS and the VFM/DINO backbones have random weights (no downloads).

Model FLOPs: counted once with `FlopCounterMode` over a full iteration (both phases, VFM and
discriminator forwards and the adaptive-weight gradients included).
"""

from __future__ import annotations

import torch

from benchmarks.cases import BenchCase
from benchmarks.workload import Workload, adamw, autocast, count_first_call, trainable_count
from vfmvae.codec import uint8_to_unit


def build_tokenizer_train(case: BenchCase, device: torch.device) -> Workload:
    """Workload of one tokenizer G + D iteration at the preset's native resolution."""
    from vfmvae.losses import LPIPS, get_loss_config
    from vfmvae.tokenizer import VFMVAE, get_config
    from vfmvae.tokenizer.discriminators import PROJECTED_DISCRIMINATOR_PRESETS, ProjectedDiscriminator
    from vfmvae.utils import EMA

    try:
        from vfmvae.losses import TokenizerObjective
    except ImportError as err:  # written by the objectives owner; absent from older trees
        raise RuntimeError("tokenizer benchmark needs vfmvae.losses.TokenizerObjective") from err

    loss_cfg = get_loss_config(case.loss_preset)
    cfg = get_config(case.preset, use_vf_projection=loss_cfg.vf_base > 0, **case.overrides)
    vfm_dtype = "bfloat16" if case.dtype == "bf16" else "float32"
    model = VFMVAE(cfg, vfm_config={"compute_dtype": vfm_dtype}).to(device).train()
    lpips = LPIPS(random_backbone=True).to(device) if loss_cfg.lpips > 0 else None
    disc = ProjectedDiscriminator(PROJECTED_DISCRIMINATOR_PRESETS[case.discriminator]).to(device).train()
    objective = TokenizerObjective(loss_cfg, cfg.img_resolution, lpips=lpips, projected_d=disc, seed=0)

    g_modules = model.trainable_modules("train_all")
    g_params = [p for m in g_modules.values() for p in m.parameters()]
    d_params = disc.trainable_parameters()
    opt_g = adamw(g_params, device, case.fused_optimizer, lr=1e-4, betas=(0.0, 0.99))
    opt_d = adamw(d_params, device, case.fused_optimizer, lr=1e-4, betas=(0.0, 0.99))
    ema = EMA(g_modules, "tokenizer") if case.ema else None
    if case.activation_checkpointing or case.compile:
        raise ValueError("tokenizer benchmark: compile / activation checkpointing are not wired for the tokenizer")

    if case.channels_last:  # the decoder is convolution-bound: NHWC kernels on tensor cores
        for module in (model.decoder, lpips, disc.heads):
            if module is not None:
                module.to(memory_format=torch.channels_last)

    gen = torch.Generator().manual_seed(0)
    side = cfg.img_resolution
    images = uint8_to_unit(
        torch.randint(0, 256, (case.batch_size, 3, side, side), generator=gen, dtype=torch.uint8).to(device)
    )

    if case.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        for p in d_params:
            p.requires_grad_(False)
        with autocast(device, case.dtype):
            g = objective.generator_phase(model, images, global_nimg=0)
        g.total.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        for p in d_params:
            p.requires_grad_(True)
        with autocast(device, case.dtype):
            d = objective.discriminator_phase(model, images)
        d.total.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(batch_size=case.batch_size)

    step, flops = count_first_call(step)
    notes = [f"{side} px, loss {case.loss_preset}, D {case.discriminator}, random VFM/LPIPS/DINO weights"]
    return Workload(
        step,
        case.batch_size,
        flops,
        "FlopCounterMode over one G+D iteration",
        notes,
        trainable_count(g_params) + trainable_count(d_params),
    )
