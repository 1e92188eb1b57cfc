"""The numerical DiT training step, in plain PyTorch with the project's modules.

One step = `vfmvae.transport.DiffusionObjective` forward (bf16 autocast or fp32) -> backward -> AdamW step ->
`zero_grad(set_to_none)` -> EMA update (decay 0.9999), on *cached latents* (the data loader is not
measured: both papers train from pre-computed latents). This is what `DiffusionModule.training_step`
does minus logging, so the numbers do not depend on Lightning. The network is any registered family
(`vfmvae.dit.registry`), driven through `vfmvae.dit.interface.DiffusionNetwork`; the case names its
transport preset.

* A network without a projector (LightningDiT): MSE + cosine, logit-normal t.
* A network with a projector (REG SiT): alignment targets as the joint-alignment callback makes them
  (projection weight 0.5, class-token weight 0.03 for a class-token state), either cached DINOv2-B
  features (`reg_target="cached"`: random `(B, [1+]N, 768)` tokens and a `(B, 768)` class token) or
  computed per step by a frozen DINOv2-B/14 at 224 px under `no_grad` (`"online"`, as the official REG
  training loop does from the stored 256 px crops).

Model FLOPs: `benchmarks.flops.dit_train_flops_per_image` (analytic, 3 x forward); the online
DINOv2 forward is added from a `FlopCounterMode` count of one target computation.
"""

from __future__ import annotations

import torch

from benchmarks.cases import BenchCase
from benchmarks.flops import count_flops, dit_train_flops_per_image
from benchmarks.workload import Workload, adamw, autocast, trainable_count
from vfmvae.codec import uint8_to_unit
from vfmvae.dit import build_diffusion_network
from vfmvae.transport import TRANSPORT_PRESETS, DiffusionObjective
from vfmvae.utils import EMA


def build_dit(case: BenchCase, device: torch.device) -> torch.nn.Module:
    """The DiT of `case` on `device`, in train mode, blocks compiled if asked."""
    model = build_diffusion_network(
        case.family, case.preset, case.overrides, activation_checkpointing=case.activation_checkpointing
    )
    model = model.to(device).train()
    if case.compile:
        for block in model.blocks:
            block.compile()
    return model


def _latent_batch(model: torch.nn.Module, batch: int, device: torch.device, generator: torch.Generator):
    x = torch.randn(batch, *model.latent_shape, generator=generator).to(device)
    y = model.condition.draw("random", batch, generator=generator).to(device)
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
            tokens, cls = vfm(uint8_to_unit(images), [-1], size=size, interpolation="bicubic", return_cls=True)
        return cls[0].float(), [torch.cat([cls[0][:, None], tokens[0]], dim=1).float()]

    return targets


def _alignment(cls: torch.Tensor | None, zs: list[torch.Tensor], transport) -> dict:
    """The ``batch["alignment"]`` entry the joint-alignment callback would write."""
    cls_weight = transport.cls_weight if cls is not None else 0.0
    return {"proj_targets": zs, "cls_target": cls, "proj_weight": transport.proj_weight, "cls_weight": cls_weight}


def build_dit_train(case: BenchCase, device: torch.device) -> Workload:
    """Workload of one DiT training step (`case.kind == "dit_train"`)."""
    gen = torch.Generator().manual_seed(0)
    transport = TRANSPORT_PRESETS[case.transport]
    objective = DiffusionObjective.from_transport(transport)
    model = build_dit(case, device)
    opt = adamw(model.parameters(), device, case.fused_optimizer, lr=2e-4, betas=(0.9, 0.95))
    ema = EMA(model, "dit") if case.ema else None
    x, y = _latent_batch(model, case.batch_size, device, gen)
    flops = float(dit_train_flops_per_image(model.config) * case.batch_size)
    method = "analytic 3x forward matmuls (benchmarks/flops.py)"
    notes = []
    with_cls = model.class_token_dim is not None
    if model.alignment_dim is None:
        targets = lambda: None
    elif case.reg_target == "online":
        vfm = _online_reg_vfm(case, device)
        if vfm.hidden_size != model.alignment_dim:
            raise ValueError(
                f"BenchCase {case.name!r}: the online VFM gives {vfm.hidden_size} features, the projector "
                f"predicts {model.alignment_dim} (set the alignment width in the case's overrides)"
            )
        online = _online_reg_target(vfm, model.token_grid, case.batch_size, device, gen)

        def targets():
            cls, zs = online()
            return _alignment(cls if with_cls else None, zs if with_cls else [z[:, 1:] for z in zs], transport)

        flops += count_flops(online)
        method += " + DINOv2 forward by FlopCounterMode"
        notes.append("alignment targets: frozen DINOv2-B/14 forward per step (random weights)")
    else:
        z = model.alignment_dim
        n_tokens = int(with_cls) + model.token_grid**2
        cls = torch.randn(case.batch_size, model.class_token_dim, generator=gen).to(device) if with_cls else None
        zs = [torch.randn(case.batch_size, n_tokens, z, generator=gen).to(device)]
        cached = _alignment(cls, zs, transport)
        targets = lambda: cached
        notes.append("alignment targets: cached DINOv2 features (random)")

    def step():
        with autocast(device, case.dtype):
            total = objective(model, x, y, targets())["total"]
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()

    return Workload(step, case.batch_size, flops, method, notes, trainable_count(model.parameters()))
