"""Tokenizer objectives (docs/design.md, "Tokenizer stages and losses") against independent formulas and the
official fixture."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vfmvae.losses import (
    EQUIVARIANCE_PRESETS,
    TOKENIZER_LOSS_PRESETS,
    EquivarianceConfig,
    EquivarianceSample,
    EquivarianceSampler,
    MultiScalePixelLoss,
    ReconstructionLoss,
    VFLossConfig,
    adaptive_vf_weight,
    discriminator_total,
    feature_matching_loss,
    generator_total,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    l1_loss,
    l2_loss,
    lsgan_d_loss,
    lsgan_g_loss,
    safe_loss_rule,
    ssim_loss,
    tokens_to_latent_grid,
    transform_input,
    transform_latent,
    transform_target,
    validate_scales,
    vf_loss,
)

# ----------------------------------------------------------------------------- KL


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 2, 2, generator=g)
    logvar = torch.randn(3, 4, 2, 2, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    per_sample = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))
    out = kl_divergence(mean, logvar)
    torch.testing.assert_close(out["kl_per_sample"], per_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["kl"], per_sample.mean(), atol=1e-5, rtol=1e-5)


def test_kl_clamps_logvar_like_the_posterior():
    mean = torch.zeros(1, 1, 1, 1)
    out = kl_divergence(mean, torch.full((1, 1, 1, 1), -100.0))["kl"]
    # logvar clamped to -30: 0.5 * (e^-30 - 1 + 30)
    assert out.item() == pytest.approx(0.5 * (math.exp(-30) - 1 + 30), rel=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(mean, torch.zeros(1, 2, 1, 1))


# ----------------------------------------------------------------------------- pixel / SSIM


def test_l1_l2_and_shape_error():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert l1_loss(a, b).item() == pytest.approx(0.5)
    assert l2_loss(a, b).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same shape"):
        l1_loss(a, b[:, :, :2])


def test_ssim_loss_matches_torchmetrics_module():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    pred = (target + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1.2, 1.2)  # some values outside [-1, 1]
    reference = 1 - StructuralSimilarityIndexMeasure(data_range=2.0)(pred.clamp(-1, 1), target.clamp(-1, 1))
    torch.testing.assert_close(ssim_loss(pred, target), reference, atol=1e-6, rtol=0)
    assert ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim_loss(pred[..., :8, :8], target[..., :8, :8])


def test_multiscale_l1_values_and_image_window():
    c = 0.25
    target = torch.full((2, 3, 64, 64), c)  # a constant image resizes to the same constant at any size
    outs = [torch.randn(2, 3, s, s, requires_grad=True) for s in (32, 16, 8, 4, 2)]
    loss = MultiScalePixelLoss()
    expected = sum(0.1 * (o.detach() - c).abs().mean() for o in outs)
    on = loss(outs, target, global_nimg=4_999_999)
    torch.testing.assert_close(on["multiscale_l1"], expected, atol=1e-6, rtol=0)
    assert on["multiscale_l1_16"].item() == pytest.approx((outs[1].detach() - c).abs().mean().item(), abs=1e-6)
    off = loss(outs, target, global_nimg=5_000_000)
    assert off["multiscale_l1"].item() == 0.0
    off["multiscale_l1"].backward()  # still in the graph (DDP sees every ToRGB), with zero gradient
    assert all(o.grad is not None and o.grad.abs().sum() == 0 for o in outs)
    with pytest.raises(ValueError, match="5 weights but the decoder returned 2"):
        loss(outs[:2], target, 0)


# ----------------------------------------------------------------------------- VF loss


def _grid(vectors: list[list[float]]) -> torch.Tensor:
    """Channel vectors at N positions -> (1, D, 1, N)."""
    return torch.tensor(vectors).t().reshape(1, len(vectors[0]), 1, len(vectors))


def test_vf_loss_on_hand_made_features():
    z = _grid([[1.0, 0.0], [0.0, 2.0]])  # positions orthogonal
    f = _grid([[3.0, 0.0], [1.0, 0.0]])  # positions parallel
    # cos matrices [[1,0],[0,1]] vs [[1,1],[1,1]] -> mean |diff| = 0.5; cos(z_i, f_i) = (1, 0) -> mean(1 - cos) = 0.5
    out = vf_loss(z, f)
    assert out["vf_distmat"].item() == pytest.approx(0.5, abs=1e-6)
    assert out["vf_cos"].item() == pytest.approx(0.5, abs=1e-6)
    assert out["vf"].item() == pytest.approx(1.0, abs=1e-6)
    margins = vf_loss(z, f, VFLossConfig(distmat_margin=0.25, cos_margin=0.5, distmat_weight=2.0, cos_weight=3.0))
    # relu(|diff| - 0.25) mean = 0.375; relu(0.5 - cos) mean = 0.25 -> 2 * 0.375 + 3 * 0.25
    assert margins["vf"].item() == pytest.approx(1.5, abs=1e-6)
    assert vf_loss(f, f)["vf"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="pool the VFM features"):
        vf_loss(z, torch.zeros(1, 2, 2, 2))


def test_vfm_tokens_are_average_pooled_to_the_latent_grid():
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)  # 4x4 grid, row-major
    grid = tokens_to_latent_grid(tokens, (2, 2))
    full = tokens.transpose(1, 2).reshape(2, 3, 4, 4)
    top_left = full[:, :, :2, :2].mean(dim=(-1, -2))
    torch.testing.assert_close(grid[:, :, 0, 0], top_left)
    with pytest.raises(ValueError, match="not a square grid"):
        tokens_to_latent_grid(tokens[:, :15], (2, 2))


def test_adaptive_weight_matches_explicit_gradient_norms():
    torch.manual_seed(0)
    theta = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(4)
    hidden = theta @ x
    rec = hidden.square().sum()
    vf = hidden.sin().sum() + 0.5 * theta.square().sum()
    (g_rec,) = torch.autograd.grad(rec, theta, retain_graph=True)
    (g_vf,) = torch.autograd.grad(vf, theta, retain_graph=True)
    expected = 5.0 * g_rec.norm() / (g_vf.norm() + 1e-4)
    lam = adaptive_vf_weight(rec, vf, theta, base_weight=5.0)
    torch.testing.assert_close(lam, expected.detach(), atol=0, rtol=1e-6)
    assert not lam.requires_grad
    (rec + lam * vf).backward()  # the graph was retained for the real backward
    # Closed form for a linear model: d(sum(theta x))/d theta = 1 x^T, d(0.5|theta|^2)/d theta = theta.
    theta2 = torch.randn(2, 4, requires_grad=True)
    lam2 = adaptive_vf_weight((theta2 @ x).sum(), 0.5 * theta2.square().sum(), theta2, base_weight=1.0)
    closed = math.sqrt(2) * x.norm() / (theta2.detach().norm() + 1e-4)
    assert lam2.item() == pytest.approx(closed.item(), rel=1e-5)
    with pytest.raises(ValueError, match="does not require grad"):
        adaptive_vf_weight(rec, vf, theta.detach(), 1.0)


def test_official_fixture_kl_and_vf_from_stored_tensors(fixtures_dir):
    from safetensors.torch import load_file

    t = load_file(str(fixtures_dir / "vfmvae_tiny.safetensors"))
    kl = kl_divergence(t["outputs.mean"], t["outputs.logvar"])["kl"]
    torch.testing.assert_close(kl, t["outputs.kl_loss"].reshape(()), atol=1e-5, rtol=1e-6)
    # VF: linear_proj(z) against the final post-LN VFM tokens pooled to the 4x4 latent grid.
    z = t["outputs.z"]
    z_proj = F.conv2d(z, t["state_dict.ldm_adapter.linear_proj.weight"])
    target = tokens_to_latent_grid(t["intermediates.vfm_feature_2"], tuple(z.shape[-2:]))
    vf = vf_loss(z_proj, target)["vf"]
    torch.testing.assert_close(vf, t["outputs.vf_loss"].reshape(()), atol=1e-5, rtol=0)


def test_official_fixture_kl_and_vf_through_the_tokenizer(fixtures_dir):
    """End-to-end: the official weights in our VFMVAE, the fixture's eps, our KL/VF -> the official scalars."""
    import json

    from safetensors.torch import load_file

    from vfmvae.losses import vf_loss_from_latent
    from vfmvae.tokenizer import from_official

    meta = json.loads((fixtures_dir / "vfmvae_tiny.json").read_text())
    t = load_file(str(fixtures_dir / "vfmvae_tiny.safetensors"))
    sd = {k[len("state_dict.") :]: v for k, v in t.items() if k.startswith("state_dict.")}
    # fp32 VFM (the official fixture ran fp32 on CPU; the default is the paper's bf16 autocast).
    model = from_official(sd, meta["generator_kwargs"], meta["siglip_vision_config"], vfm_dtype="float32")
    with torch.no_grad():
        out = model(t["inputs.img"], eps=t["inputs.eps"])
        kl = kl_divergence(out.posterior.mean, out.posterior.logvar)["kl"]
        vf = vf_loss_from_latent(out.z, out.vfm_features[-1], model.head.vf_projection)["vf"]
    torch.testing.assert_close(kl, t["outputs.kl_loss"].reshape(()), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vf, t["outputs.vf_loss"].reshape(()), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- equivariance


def test_equivariance_branch_frequencies_with_fixed_seed():
    sampler = EquivarianceSampler(EquivarianceConfig(), resolution=256, seed=123)
    n = 20_000
    draws = [sampler.sample() for _ in range(n)]
    expected = {
        "latent branch": (sum(d.branch == "latent" for d in draws), 0.5),
        "identity": (sum(d.is_identity for d in draws), 0.5 / 16 + 0.5 * 0.75),  # 0.40625
        "input scaled": (sum(d.branch == "input" and d.scale != 1.0 for d in draws), 0.125),
        "latent s=0.25": (sum(d.branch == "latent" and d.scale == 0.25 for d in draws), 0.125),
        "latent k=3": (sum(d.branch == "latent" and d.rot_k == 3 for d in draws), 0.125),
        "input s=0.75": (sum(d.branch == "input" and d.scale == 0.75 for d in draws), 0.5 * 0.25 / 3),
    }
    for name, (count, p) in expected.items():
        bound = 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma binomial bound
        assert abs(count / n - p) < bound, f"{name}: {count / n:.4f} vs {p:.4f}"
    assert all(d.rot_k == 0 for d in draws if d.branch == "input")
    assert not sampler.sample(training=False).branch == "latent"
    assert sampler.sample(training=False).is_identity


def test_equivariance_sampler_is_reproducible_and_resumable():
    a = EquivarianceSampler(EquivarianceConfig(), 256, seed=7)
    b = EquivarianceSampler(EquivarianceConfig(), 256, seed=7)
    assert [a.sample() for _ in range(50)] == [b.sample() for _ in range(50)]
    state = a.state_dict()
    nxt = [a.sample() for _ in range(20)]
    b.load_state_dict(state)
    assert [b.sample() for _ in range(20)] == nxt


def test_invalid_scale_sets_are_refused_with_a_clear_message():
    with pytest.raises(
        ValueError, match=r"invalid at 128 px.*latent scale 0.25 -> latent side 2.*Valid scales here: \[0.5, 1.0\]"
    ):
        EquivarianceSampler(EquivarianceConfig(), resolution=128)
    with pytest.raises(ValueError, match="invalid at 64 px"):
        validate_scales(EquivarianceConfig(), 64)
    validate_scales(EquivarianceConfig(), 256)
    validate_scales(EQUIVARIANCE_PRESETS["res-128"], 128)
    validate_scales(EQUIVARIANCE_PRESETS["debug"], 64)
    with pytest.raises(ValueError, match="rotations"):
        validate_scales(EquivarianceConfig(rotations=(5,)), 256)


def test_equivariance_transforms():
    z = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(1, 2, 16, 16)
    rot = transform_latent(z, EquivarianceSample("latent", 1.0, 1))
    h = z.shape[-2]
    i, j = 3, 5  # clockwise quarter turn: out[i, j] = x[H - 1 - j, i]
    assert rot[0, 0, i, j] == z[0, 0, h - 1 - j, i]
    small = transform_latent(z, EquivarianceSample("latent", 0.75, 2))
    assert small.shape[-2:] == (12, 12)
    ref = torch.rot90(F.interpolate(z, size=(12, 12), mode="bilinear", align_corners=False), 2, dims=(-1, -2))
    torch.testing.assert_close(small, ref)
    img = torch.rand(2, 3, 256, 256)
    s = EquivarianceSample("input", 0.5, 0)
    assert transform_input(img, s).shape[-2:] == (128, 128)
    assert transform_latent(z, s) is z  # input branch leaves the latent alone
    gt = transform_target(img, EquivarianceSample("latent", 0.25, 3))
    ref = torch.rot90(
        F.interpolate(img, size=(64, 64), mode="bilinear", align_corners=False, antialias=True), 3, dims=(-1, -2)
    )
    torch.testing.assert_close(gt, ref)
    assert transform_target(img, EquivarianceSample()) is img


# ----------------------------------------------------------------------------- adversarial


def test_hinge_losses():
    real = torch.tensor([[2.0, 0.5], [-1.0, 0.0]])
    fake = torch.tensor([[-2.0, 0.5], [1.0, -0.5]])
    d = hinge_d_loss(real, fake)
    # relu(1 - real) = [0, .5, 2, 1] -> 0.875; relu(1 + fake) = [0, 1.5, 2, .5] -> 1.0
    assert d["d_hinge_real"].item() == pytest.approx(0.875)
    assert d["d_hinge_fake"].item() == pytest.approx(1.0)
    assert d["d_hinge"].item() == pytest.approx(1.875)
    assert hinge_g_loss(fake)["g_hinge"].item() == pytest.approx(0.25)  # -mean(-2, .5, 1, -.5)


def test_lsgan_and_feature_matching():
    def scales(values, feats):
        return [[torch.full((1, 1, 2, 2), f) for f in feats] + [torch.full((1, 1, 3, 3), v)] for v in values]

    real = scales([1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0])
    fake = scales([0.5, -1.0, 0.0], [1.0, 2.0, 0.0, -1.0])
    d = lsgan_d_loss(real, fake)
    assert d["d_lsgan_real"].item() == pytest.approx((0 + 1 + 1) / 3)  # (D(real) - 1)^2 per scale
    assert d["d_lsgan_fake"].item() == pytest.approx((0.25 + 1 + 0) / 3)  # D(fake)^2
    assert lsgan_g_loss(fake)["g_lsgan"].item() == pytest.approx((0.25 + 4 + 1) / 3)
    # FM: 3 scales x (1/3) x (4/4) x (|1| + |2| + 0 + |-1|) = 4
    assert feature_matching_loss(real, fake)["feature_matching"].item() == pytest.approx(4.0)
    real_req = [[t.clone().requires_grad_(True) for t in s] for s in real]
    fake_req = [[t.clone().requires_grad_(True) for t in s] for s in fake]
    feature_matching_loss(real_req, fake_req)["feature_matching"].backward()
    assert all(t.grad is None for s in real_req for t in s)  # real features are detached
    assert fake_req[0][0].grad is not None and fake_req[0][-1].grad is None  # logits are not matched


# ----------------------------------------------------------------------------- safe-loss rule


def test_safe_loss_rule():
    prev = {"l1": 0.1, "lpips": 0.5, "ssim": 0.0, "g_hinge": 1.0}
    assert safe_loss_rule("G", {"l1": float("nan")}, run_nimg=50_000, prev_safe_terms=prev).safe  # warm-up
    assert safe_loss_rule("G", {"l1": 0.9, "lpips": 4.9, "g_hinge": 500.0}, 50_001, prev).safe
    bad = safe_loss_rule("G", {"l1": 1.01, "lpips": 0.1, "ssim": 3.0, "g_hinge": float("inf")}, 60_000, prev)
    # l1 > 10x previous; ssim's previous value 0 <= 1e-6 so no ratio test; GAN terms only finiteness
    assert not bad.safe and bad.unsafe_terms == ("l1", "g_hinge")
    assert safe_loss_rule("G", {"l1": 100.0}, 60_000, None).safe  # no previous safe step yet
    assert safe_loss_rule("G", {"vf": float("nan"), "kl": float("inf")}, 60_000, prev).safe  # not checked
    d = safe_loss_rule("D", {"d_hinge": torch.tensor(2e4), "d_hinge_real": 1.0}, 60_000)
    assert not d.safe and d.unsafe_terms == ("d_hinge",)
    assert safe_loss_rule("D", {"d_lsgan": -9_999.0}, 60_000).safe
    with pytest.raises(ValueError, match="phase"):
        safe_loss_rule("X", {}, 0)


# ----------------------------------------------------------------------------- stage objectives


def test_stage_presets_follow_the_spec_table():
    p = TOKENIZER_LOSS_PRESETS
    assert (p["stage0"].lpips, p["stage0"].vf_base, p["stage0"].kl, p["stage0"].stylegan_t) == (10.0, 5.0, 1e-6, 1.0)
    assert (p["stage1"].vf_base, p["stage1"].lpips) == (1.0, 10.0)
    assert (p["stage2"].lpips, p["stage2"].ssim, p["stage2"].kl, p["stage2"].vf_base) == (2.0, 1.0, 0.0, 0.0)
    s3 = p["stage3"]
    assert (s3.l1, s3.lpips, s3.patchgan, s3.feature_matching, s3.equivariance.enabled) == (0.0, 0.0, 1.0, 10.0, False)
    assert p["stage0"].multiscale.weights == [0.1] * 5 and p["stage0"].multiscale.end_nimg == 5_000_000


def test_reconstruction_and_totals_combine_named_terms():
    cfg = TOKENIZER_LOSS_PRESETS["stage2"]
    lpips_stub = type("Stub", (), {"loss": staticmethod(lambda a, b: torch.tensor(0.5))})()
    rec_loss = ReconstructionLoss(cfg, lpips=lpips_stub)
    pred, target = torch.zeros(1, 3, 16, 16), torch.full((1, 3, 16, 16), 0.5)
    outs = [torch.zeros(1, 3, s, s) for s in (8, 4, 2, 1, 1)]
    terms = rec_loss(pred, target, outs, global_nimg=41_000_000)  # past the 5 M cut-off
    expected_rec = 1.0 * 0.5 + 2.0 * 0.5 + 1.0 * terms["ssim"].item() + 0.0
    assert terms["rec"].item() == pytest.approx(expected_rec, abs=1e-6)
    terms.update(g_hinge=torch.tensor(2.0), kl=torch.tensor(100.0), vf=torch.tensor(3.0))
    total = generator_total(terms, cfg, vf_weight=0.0)
    assert total.item() == pytest.approx(expected_rec + 2.0, abs=1e-6)  # KL weight 0 in stage 2
    s0 = TOKENIZER_LOSS_PRESETS["stage0"]
    assert generator_total(terms, s0, vf_weight=torch.tensor(0.5)).item() == pytest.approx(
        expected_rec + 2.0 + 1e-4 + 1.5, abs=1e-5
    )
    d = discriminator_total(
        {"d_hinge": torch.tensor(1.5), "d_lsgan": torch.tensor(0.25)}, TOKENIZER_LOSS_PRESETS["stage3"]
    )
    assert d.item() == pytest.approx(1.75)
    with pytest.raises(ValueError, match="no LPIPS module"):
        ReconstructionLoss(TOKENIZER_LOSS_PRESETS["stage0"], lpips=None)


def test_safe_loss_rule_plugs_into_the_guard():
    from vfmvae.losses import TokenizerSafeLossRule
    from vfmvae.utils.guard import NonFiniteGuard

    rule = TokenizerSafeLossRule("G")
    guard = NonFiniteGuard(max_consecutive_skips=0, rule=rule)
    rule.set_run_nimg(10_000)
    assert guard.check({"l1": torch.tensor(0.1), "g_hinge": torch.tensor(1.0)})  # warm-up, stored as reference
    rule.set_run_nimg(60_000)
    assert not guard.check({"l1": torch.tensor(1.5), "g_hinge": torch.tensor(1.0)})  # 15x the last safe value
    assert guard.last_bad_terms == ["l1"]
    assert guard.check({"l1": torch.tensor(0.9), "g_hinge": torch.tensor(-3.0)})  # 9x: safe, new reference 0.9
    assert not guard.check({"l1": torch.tensor(9.5)})
    restored = TokenizerSafeLossRule("G")
    restored.load_state_dict(rule.state_dict())
    assert restored({"l1": 9.5}) == ["l1"] and restored({"l1": 8.9}) == []


def test_vf_loss_is_a_float32_island_under_autocast():
    g = torch.Generator().manual_seed(2)
    z, f = torch.randn(2, 64, 4, 4, generator=g), torch.randn(2, 64, 4, 4, generator=g)
    reference = vf_loss(z, f)["vf"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = vf_loss(z.bfloat16().float(), f)["vf"]
    ref_rounded = vf_loss(z.bfloat16().float(), f)["vf"]
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, ref_rounded, atol=1e-6, rtol=0)
    assert abs(reference.item() - under_autocast.item()) < 1e-2
