"""JointAlignmentCallback (docs/design.md, "Diffusion training"): targets, REG losses falling on an overfit,
on/off window, checkpoint state, LightningDiT REPA option, shape errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_diffusion_helpers import Recorder, TinyLatentDataModule, fit, tiny_module

from callbacks.joint_alignment import JointAlignmentCallback
from vfmvae.vfm import build_vfm


def _callback(**kw):
    return JointAlignmentCallback(**{"vfm": "debug-dinov2", "image_size": 56, **kw})


def _images(n=2, seed=0):
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_reg_targets_are_cls_then_patch_tokens_of_the_resized_image():
    cb = _callback()
    cb.vfm, cb._cls = build_vfm("debug-dinov2"), True
    images = _images()
    out = cb.targets(images)
    # Independent path: resize to 56 px bicubic ourselves, then the VFM at its native size.
    x = F.interpolate(images.float() / 255.0, size=(56, 56), mode="bicubic", align_corners=False)
    tokens, cls = cb.vfm(x, [-1], return_cls=True)
    torch.testing.assert_close(out["cls_target"], cls[0].float())
    torch.testing.assert_close(out["proj_targets"][0], torch.cat([cls[0][:, None], tokens[0]], 1).float())
    assert out["proj_targets"][0].shape == (2, 1 + 16, 64)
    assert (out["proj_weight"], out["cls_weight"]) == (0.5, 0.03)


def test_class_token_substitute_for_a_vfm_without_cls_is_the_mean_patch_token():
    cb = JointAlignmentCallback(vfm="debug-siglip", image_size=64, interpolation="bilinear", use_cls=True)
    cb.vfm, cb._cls = build_vfm("debug-siglip"), True
    assert not cb.vfm.has_cls
    out = cb.targets(_images())
    patches = out["proj_targets"][0][:, 1:]
    torch.testing.assert_close(out["cls_target"], patches.mean(dim=1))
    torch.testing.assert_close(out["proj_targets"][0][:, 0], patches.mean(dim=1))


def test_reg_alignment_losses_logged_and_projection_loss_falls_on_overfit():
    torch.manual_seed(0)
    module = tiny_module("reg", lr=3e-3)
    rec = Recorder()
    # One fixed batch of 4 (same latents and images every step): a small overfit.
    fit(module, TinyLatentDataModule(n=4, batch_size=4), [rec, _callback()], max_steps=12)
    proj = [r["metrics"]["loss/proj"] for r in rec.rows]
    assert all("loss/cls_mse" in r["metrics"] and r["aligned"] for r in rec.rows)
    assert proj[-1] < proj[0] - 0.05, proj  # -cos falls as the projector learns the DINOv2 tokens
    total = rec.rows[-1]["metrics"]
    assert total["loss/total"] == pytest.approx(
        total["loss/mse"] + 0.5 * total["loss/proj"] + 0.03 * total["loss/cls_mse"], rel=1e-5
    )


def test_window_switch_and_state_restore_from_checkpoint(tmp_path):
    module = tiny_module("reg")
    cb = _callback(end_step=2)
    rec = Recorder()
    trainer = fit(module, TinyLatentDataModule(n=4, batch_size=4), [rec, cb], max_steps=3, default_root_dir=tmp_path)
    assert [r["aligned"] for r in rec.rows] == [True, True, False]  # off from step 2
    last = rec.rows[-1]["metrics"]  # (callback_metrics keeps older keys: compare the terms instead)
    assert last["loss/total"] == pytest.approx(last["loss/mse"])  # no alignment terms, zero class token
    assert (cb.num_aligned_batches, cb.num_skipped_batches) == (2, 1)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any(k.startswith("JointAlignmentCallback") for k in state)
    # Resume with a callback configured differently: the checkpoint's window and counters win.
    cb2 = _callback(end_step=None)
    fit(tiny_module("reg"), TinyLatentDataModule(n=4, batch_size=4), [cb2], max_steps=4, ckpt_path=ckpt)
    assert cb2.end_step == 2 and (cb2.num_aligned_batches, cb2.num_skipped_batches) == (2, 2)


def test_lightningdit_repa_projector_option():
    module = tiny_module("lightningdit", repa_encoder_depth=1, repa_projector_dim=32, repa_z_dim=64)
    assert any(n.startswith("projectors.") for n, _ in module.net.named_parameters())  # inside the network
    rec = Recorder()
    fit(module, TinyLatentDataModule(n=4, batch_size=4), [rec, _callback()], max_steps=2)
    m = rec.rows[-1]["metrics"]
    assert {"loss/proj", "loss/mse", "loss/cos"} <= set(m) and "loss/cls_mse" not in m
    assert m["loss/total"] == pytest.approx(m["loss/mse"] + m["loss/cos"] + 0.5 * m["loss/proj"], rel=1e-5)


def test_shape_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="token grid"):
        fit(tiny_module("reg"), TinyLatentDataModule(n=4, batch_size=4), [_callback(image_size=112)], max_steps=1)
    with pytest.raises(ValueError, match="projector predicts 32 features"):
        fit(
            tiny_module("reg", network_overrides={"input_size": 4, "z_dims": [32]}),
            TinyLatentDataModule(n=4, batch_size=4),
            [_callback()],
            max_steps=1,
        )
    with pytest.raises(ValueError, match="no projector"):
        fit(tiny_module("lightningdit"), TinyLatentDataModule(n=4, batch_size=4), [_callback()], max_steps=1)
    with pytest.raises(ValueError, match="window"):
        _callback(start_step=5, end_step=5)
