"""DiffusionModule: batch plan, paper configs (meta), a few steps of each model, lognorm switch, EMA scope,
gradient clipping, guard (docs/design.md, "Diffusion training")."""

from __future__ import annotations

import importlib

import pytest
import torch
import yaml
from test_diffusion_helpers import LATENT, Recorder, TinyLatentDataModule, fit, tiny_module

from callbacks.ema import EMACallback
from callbacks.joint_alignment import JointAlignmentCallback
from lightning_modules.diffusion import BatchPlan, DiffusionModule


def test_batch_plan_derivation_and_errors():
    assert BatchPlan.derive(1024, 8) == BatchPlan(1024, 8, 128, 1)
    assert BatchPlan.derive(1024, 16, micro_batch_size=32) == BatchPlan(1024, 16, 32, 2)
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        BatchPlan.derive(1024, 3)
    with pytest.raises(ValueError, match="micro_batch_size 48 must divide"):
        BatchPlan.derive(1024, 8, micro_batch_size=48)


def _instantiate(spec):
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


# Trainable parameter counts of the official classes (docs/design.md, "Diffusion networks and the network interface";
# measured on the official code).
PAPER = {
    "lightningdit_xl1_vfmvae.yaml": dict(params=674_965_856, steps=700_000, clip=None, switch=600_000),
    "reg_sitxl1_vfmvae.yaml": dict(params=684_766_240, steps=800_000, clip=1.0, switch=None),
    # Beyond the paper: + REPA projector 1152-2048-2048-768 (8,131,328 params, as REG's) on block 8.
    "lightningdit_xl1_vfmvae_repa.yaml": dict(params=674_965_856 + 8_131_328, steps=700_000, clip=None, switch=600_000),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_instantiate_on_meta(name, repo_root, monkeypatch):
    monkeypatch.setenv("TOKENIZER", "/nonexistent/tokenizer")
    monkeypatch.setenv("DINOV2", "/nonexistent/dinov2.pth")
    cfg = yaml.safe_load((repo_root / "configs" / "diffusion" / name).read_text())
    want = PAPER[name]
    with torch.device("meta"):
        module = _instantiate(cfg["model"])
    assert isinstance(module, DiffusionModule)
    assert next(module.net.parameters()).device.type == "meta"
    assert sum(p.numel() for p in module.net.parameters() if p.requires_grad) == want["params"]
    hp = module.hparams
    assert (hp.lr, tuple(hp.betas), hp.weight_decay, hp.global_batch_size) == (2e-4, (0.9, 0.95), 0.0, 1024)
    assert hp.gradient_clip_norm == want["clip"]
    assert module.transport.uniform_from_step == want["switch"]
    assert cfg["trainer"]["max_steps"] == want["steps"]
    callbacks = [_instantiate(c) for c in cfg["trainer"]["callbacks"]]
    ema = [c for c in callbacks if isinstance(c, EMACallback)]
    assert len(ema) == 1 and ema[0].attributes == ["net"] and ema[0].config.decay == 0.9999
    align = [c for c in callbacks if isinstance(c, JointAlignmentCallback)]
    if name.startswith("reg"):
        assert len(align) == 1
        a = align[0]
        assert (a.vfm_name, a.image_size, a.interpolation, a.proj_weight, a.cls_weight) == (
            "dinov2-vitb14",
            224,
            "bicubic",
            0.5,
            0.03,
        )
        assert module.net.config.encoder_depth == 8 and module.net.config.z_dims == (768,)
    elif name.endswith("_repa.yaml"):
        assert len(align) == 1 and align[0].proj_weight == 0.5 and align[0].use_cls is None
        assert module.net.encoder_depth == 8 and cfg["data"]["init_args"]["config"]["return_images"]
    else:
        assert not align  # the paper's LightningDiT run has no representation alignment


def test_lightningdit_few_steps_accumulation_and_lognorm_switch():
    # The paper config with tiny overrides: switch at step 2, global batch 4 = 1 device x 2 x 2 accumulation.
    module = tiny_module("lightningdit", transport_overrides={"uniform_from_step": 2}, micro_batch_size=2)
    rec = Recorder()
    dm = TinyLatentDataModule(n=8, batch_size=99)
    trainer = fit(module, dm, [rec], max_steps=3)
    assert dm.batch_size == 2  # set from the batch plan
    assert module.plan == BatchPlan(4, 1, 2, 2)
    steps = [r["step"] for r in rec.rows]
    assert steps == [0, 1, 1, 2, 2, 3]  # one optimiser step every 2 micro-batches
    dist = {r["step"] - (1 if i % 2 else 0): r["distribution"] for i, r in enumerate(rec.rows)}
    assert dist == {0: "logit_normal", 1: "logit_normal", 2: "uniform"}
    assert trainer.global_step == 3
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"]) == (2e-4, (0.9, 0.95), 0.0)
    assert {"loss/total", "loss/mse", "loss/cos"} <= set(rec.rows[-1]["metrics"])
    assert not rec.grad_norms or len(rec.grad_norms) == 3


def test_reg_few_steps_clipping_and_ema_covers_only_the_network():
    module = tiny_module("reg", gradient_clip_norm=1e-3, lr=1e-2)
    rec = Recorder()
    ema_cb = EMACallback(["net"], preset="dit", decay=0.5)
    align = JointAlignmentCallback(vfm="debug-dinov2", image_size=56)
    w0 = {k: v.clone() for k, v in module.net.state_dict().items()}
    fit(module, TinyLatentDataModule(n=8, batch_size=4), [rec, ema_cb, align], max_steps=2)
    # Clipping: the norm seen by the optimiser never exceeds the limit (an unclipped norm is far larger).
    assert len(rec.grad_norms) == 2 and max(rec.grad_norms) <= 1e-3 * (1 + 1e-4)
    assert {"loss/mse", "loss/proj", "loss/cls_mse"} <= set(rec.rows[-1]["metrics"])
    # EMA scope: exactly the network's trainable parameters; nothing of the VFM.
    ema = ema_cb.ema
    names = {f"net.{n}" for n, p in module.net.named_parameters() if p.requires_grad}
    assert set(ema.param_names) == names
    assert not any("vfm" in n or "decoder" in n for n in ema.param_names)
    assert sum(p.numel() for p in ema.shadow_params) == sum(p.numel() for p in module.net.parameters())
    # EMA values: e2 = 0.5 * (0.5 * w0 + 0.5 * w1) + 0.5 * w2, recomputed from the recorded weights.
    w1, w2 = rec.rows[0]["weights"], rec.rows[1]["weights"]
    sd = ema.state_dict()["params"]
    for key in ("final_layer.linear.weight", "blocks.0.attn.qkv.weight", "projectors.0.0.weight"):
        expected = 0.5 * (0.5 * w0[key] + 0.5 * w1[key]) + 0.5 * w2[key]
        torch.testing.assert_close(sd[f"net.{key}"], expected)
    assert not torch.equal(w2["final_layer.linear.weight"], w0["final_layer.linear.weight"])


def test_reg_without_alignment_uses_zero_class_token_and_mse_only():
    module = tiny_module("reg")
    seen = []
    module.net.cls_projectors2.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    rec = Recorder()
    fit(module, TinyLatentDataModule(n=4, batch_size=4), [rec], max_steps=1)
    assert seen and all(torch.equal(s, torch.zeros_like(s)) for s in seen)
    metrics = rec.rows[-1]["metrics"]
    assert "loss/proj" not in metrics and "loss/cls_mse" not in metrics
    assert metrics["loss/total"] == pytest.approx(metrics["loss/mse"])


def test_guard_skips_a_non_finite_step():
    module = tiny_module("lightningdit")
    w0 = {k: v.clone() for k, v in module.net.state_dict().items()}
    rec = Recorder()
    dm = TinyLatentDataModule(n=8, batch_size=4, nan_index=1)  # batch 0 has a NaN latent
    trainer = fit(module, dm, [rec], max_steps=1)
    assert [r["step"] for r in rec.rows] == [0, 1]  # batch 0 skipped, batch 1 stepped
    assert rec.rows[0]["metrics"]["guard/skipped"] == 1.0
    for k, v in rec.rows[0]["weights"].items():
        assert torch.equal(v, w0[k]), k
    assert trainer.global_step == 1 and module.guard.num_skipped == 1


def test_wrong_latent_shape_and_convention_errors():
    module = tiny_module("lightningdit")
    with pytest.raises(ValueError, match="the network takes"):
        module.compute_loss({"latent": torch.zeros(2, 8, 8, 8), "label": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match="time convention"):
        DiffusionModule(network="reg", preset="debug", transport="lightningdit")
    assert module.latent_shape == LATENT


def test_sample_grid_is_logged_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks.sample_grid import SampleGridCallback

    grid = SampleGridCallback(tokenizer=None, tokenizer_preset="debug", every_n_steps=1, num_samples=4, num_steps=3)
    logger = TensorBoardLogger(str(tmp_path), name="demo_diffusion", version="demo", default_hp_metric=False)
    fit(
        tiny_module("lightningdit"),
        TinyLatentDataModule(n=4, batch_size=4),
        [EMACallback(["net"], preset="dit"), grid],
        max_steps=2,
        logger=logger,
        log_every_n_steps=1,
    )
    assert grid.num_logged == 2 and grid.last_grid.dtype == torch.uint8
    assert grid.last_grid.shape == (3, 2 * 66 + 2, 2 * 66 + 2)  # 2x2 mosaic of 64 px images, 2 px padding
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("grid/samples")] == [1, 2]
    assert "loss/total" in events.Tags()["scalars"]
    from callbacks.tb_layout import invalid_tags

    assert invalid_tags([t for t in events.Tags()["scalars"] if t != "epoch"]) == []  # Lightning's own "epoch"


def test_config_paths_from_environment_variables(monkeypatch):
    from vfmvae.tokenizer.loading import resolve_path

    monkeypatch.setenv("TOKENIZER", "/weights/tok")
    monkeypatch.delenv("DINOV2", raising=False)
    assert resolve_path("${TOKENIZER}/export", "x") == "/weights/tok/export"
    assert resolve_path("${DINOV2}", "x", optional=True) is None
    with pytest.raises(ValueError, match="environment variable DINOV2, which is not set"):
        resolve_path("${DINOV2}", "JointAlignmentCallback.vfm_pretrained")
