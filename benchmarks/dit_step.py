"""The numerical DiT training step, in plain PyTorch with the project's modules (issue 15).

One step = flow-matching loss forward (bf16 autocast or fp32) -> backward -> AdamW step ->
`zero_grad(set_to_none)` -> EMA update (decay 0.9999), on *cached latents* (the data loader is not
measured: both papers train from pre-computed latents). This is what `DiffusionModule.training_step`
does minus logging, so the numbers do not depend on Lightning.

* LightningDiT (diffusion spec §3.1-3.2): `LightningDiTLoss` (logit-normal t, MSE + cosine).
* REG SiT: `REGLoss` (MSE + 0.5 projection + 0.03 class-token MSE). Targets are either cached
  DINOv2-B features (`reg_target="cached"`: random `(B, 1+N, 768)` tokens and `(B, 768)` class token)
  or computed per step by a frozen DINOv2-B/14 at 224 px under `no_grad` (`"online"`, as the official
  REG training loop does from the stored 256 px crops).

Model FLOPs: `benchmarks.flops.dit_train_flops_per_image` (analytic, 3 x forward); the online
DINOv2 forward is added from a `FlopCounterMode` count of one target computation.
"""

from __future__ import annotations

import torch

from benchmarks.cases import BenchCase
from benchmarks.flops import count_flops, dit_train_flops_per_image
from benchmarks.workload import Workload, adamw, autocast, trainable_count
from vfmvae.dit import build_lightningdit, build_sit_reg
from vfmvae.transport import TRANSPORT_PRESETS
from vfmvae.utils import EMA


def build_dit(case: BenchCase, device: torch.device) -> torch.nn.Module:
    """The DiT of `case` on `device`, in train mode, blocks compiled if asked."""
    build = build_lightningdit if case.family == "lightningdit" else build_sit_reg
    model = build(case.preset, activation_checkpointing=case.activation_checkpointing, **case.overrides)
    model = model.to(device).train()
    if case.compile:
        model.compile_blocks()
    return model


def _latent_batch(model: torch.nn.Module, batch: int, device: torch.device, generator: torch.Generator):
    c = model.config
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, generator=generator).to(device)
    y = torch.randint(0, c.num_classes, (batch,), generator=generator).to(device)
    return x, y


def _online_reg_vfm(case: BenchCase, device: torch.device) -> torch.nn.Module:
    """Frozen DINOv2-B/14 in the torch.hub format REG loads (random weights; tiny one for `debug`)."""
    from vfmvae.vfm import build_vfm

    dtype = "bfloat16" if case.dtype == "bf16" else "float32"
    name = "dinov2-vitb14" if case.preset != "debug" else "debug-dinov2-hub"
    return build_vfm(name, config={"compute_dtype": dtype}).to(device)


def _online_reg_target(vfm, grid: int, batch: int, device: torch.device, generator: torch.Generator):
    """Per-step targets from 16*grid px uint8 crops (256 px for XL), resized to patch*grid (224 px):
    `(cls (B, D), [cat(cls, patch tokens) (B, 1+grid**2, D)])`."""
    side, size = 16 * grid, vfm.patch_size * grid
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=generator).to(device)

    def targets():
        with torch.no_grad():
            tokens, cls = vfm(images.float() / 255.0, [-1], size=size, interpolation="bicubic", return_cls=True)
        return cls[0].float(), [torch.cat([cls[0][:, None], tokens[0]], dim=1).float()]

    return targets


def build_dit_train(case: BenchCase, device: torch.device) -> Workload:
    """Workload of one DiT training step (`case.kind == "dit_train"`)."""
    gen = torch.Generator().manual_seed(0)
    vfm = None
    if case.family == "reg" and case.reg_target == "online":
        vfm = _online_reg_vfm(case, device)  # the class-token size follows the target VFM
        case = case.replace(overrides={**case.overrides, "z_dims": (vfm.hidden_size,)})
    model = build_dit(case, device)
    opt = adamw(model.parameters(), device, case.fused_optimizer, lr=2e-4, betas=(0.9, 0.95))
    ema = EMA(model, "dit") if case.ema else None
    x, y = _latent_batch(model, case.batch_size, device, gen)
    flops = float(dit_train_flops_per_image(model.config) * case.batch_size)
    method = "analytic 3x forward matmuls (benchmarks/flops.py)"
    notes = []
    if case.family == "lightningdit":
        loss_fn = TRANSPORT_PRESETS["lightningdit"].build_loss()

        def loss():
            return loss_fn(model, x, y)["total"]
    else:
        loss_fn = TRANSPORT_PRESETS["reg"].build_loss()
        if case.reg_target == "online":
            targets = _online_reg_target(vfm, model.config.grid_size, case.batch_size, device, gen)
            flops += count_flops(targets)
            method += " + DINOv2 forward by FlopCounterMode"
            notes.append("REG targets: frozen DINOv2-B/14 forward per step (random weights)")
        else:
            z = model.config.z_dims[0]
            n_tokens = 1 + model.config.grid_size**2
            cls = torch.randn(case.batch_size, z, generator=gen).to(device)
            zs = [torch.randn(case.batch_size, n_tokens, z, generator=gen).to(device)]

            def targets():
                return cls, zs

            notes.append("REG targets: cached DINOv2 features (random)")

        def loss():
            cls_t, zs_t = targets()
            return loss_fn(model, x, cls_t, y, zs_t)["total"]

    def step():
        with autocast(device, case.dtype):
            total = loss()
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()

    return Workload(step, case.batch_size, flops, method, notes, trainable_count(model.parameters()))
