"""Paths, time sampling, grids, loss composition and presets, against hand-written formulas."""

import math

import pytest
import torch

from vfmvae.transport import (
    SAMPLER_PRESETS,
    TRANSPORT_PRESETS,
    LightningDiTLoss,
    LinearPath,
    REGLoss,
    SamplerConfig,
    TimestepSampler,
    TransportConfig,
    ode_time_grid,
    sde_time_grid,
    shift_time,
)

F64 = torch.float64


@pytest.mark.parametrize("convention", ["data_at_one", "noise_at_one"])
def test_path_endpoints_and_velocity_is_time_derivative(convention):
    path = LinearPath(convention)
    x, e = torch.randn(3, 4, 2, 2, dtype=F64), torch.randn(3, 4, 2, 2, dtype=F64)
    one, zero = torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)
    data_end, noise_end = (one, zero) if convention == "data_at_one" else (zero, one)
    torch.testing.assert_close(path.interpolate(x, e, data_end), x)
    torch.testing.assert_close(path.interpolate(x, e, noise_end), e)
    t, h = torch.tensor([0.2, 0.5, 0.7], dtype=F64), 1e-6
    fd = (path.interpolate(x, e, t + h) - path.interpolate(x, e, t - h)) / (2 * h)
    torch.testing.assert_close(path.velocity_target(x, e), fd, atol=1e-8, rtol=0)


def test_conventions_are_the_same_line():
    x, e, t = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64), torch.rand(2, dtype=F64)
    a, b = LinearPath("lightningdit"), LinearPath("reg")
    torch.testing.assert_close(a.interpolate(x, e, t), b.interpolate(x, e, 1 - t))
    torch.testing.assert_close(a.velocity_target(x, e), -b.velocity_target(x, e))


def test_path_errors():
    with pytest.raises(ValueError, match="time must have shape"):
        LinearPath().interpolate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="time convention"):
        LinearPath("backwards")


def test_logit_normal_and_uniform_time_distributions():
    g = torch.Generator().manual_seed(0)
    ln = TimestepSampler("logit_normal").sample(20000, generator=g, dtype=F64)
    logit = torch.log(ln / (1 - ln))
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03
    un = TimestepSampler("uniform").sample(20000, generator=g)
    assert abs(un.mean() - 0.5) < 0.01 and abs(un.var() - 1 / 12) < 0.003
    assert ((un >= 0) & (un < 1)).all()


def test_switch_from_logit_normal_to_uniform_at_step():
    s = TimestepSampler("logit_normal", uniform_from_step=600_000)
    assert s.distribution_at(0) == "logit_normal" and s.distribution_at(599_999) == "logit_normal"
    assert s.distribution_at(600_000) == "uniform"
    late = s.sample(20000, step=600_000, generator=torch.Generator().manual_seed(1))
    early = s.sample(20000, step=10, generator=torch.Generator().manual_seed(1))
    # Logit-normal(0, 1) has variance ~0.0431, uniform 1/12.
    assert abs(late.var() - 1 / 12) < 0.003 and abs(early.var() - 0.0431) < 0.003


def test_time_sampling_is_deterministic_per_generator():
    s = TimestepSampler("logit_normal")
    a = s.sample(5, generator=torch.Generator().manual_seed(3))
    b = s.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="time distribution"):
        TimestepSampler("cosine")


def test_timestep_shift_formula_and_grids():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(shift_time(t, 0.3), torch.tensor([0.0, 0.15 / 0.65, 1.0], dtype=F64))
    assert shift_time(t, None) is t and shift_time(t, 0) is t
    with pytest.raises(ValueError, match="timestep_shift"):
        shift_time(t, -1.0)
    grid = ode_time_grid(250, shift=0.3, dtype=F64)
    s = torch.arange(250, dtype=F64) / 249
    torch.testing.assert_close(grid, 0.3 * s / (1 - 0.7 * s))
    torch.testing.assert_close(ode_time_grid(250, shift=0.3, convention="reg", dtype=F64), 1 - grid)
    with pytest.raises(ValueError, match="at least 2"):
        ode_time_grid(1)


def test_sde_grid():
    g = sde_time_grid(250)
    assert g.dtype == F64 and g.numel() == 251
    assert g[0] == 1.0 and g[-1] == 0.0 and abs(g[-2].item() - 0.04) < 1e-15
    torch.testing.assert_close(g[1] - g[0], torch.tensor(-0.96 / 249, dtype=F64))


def _manual_cos(p, u):
    dot = (p * u).sum(1)
    return 1 - dot / (p.norm(dim=1) * u.norm(dim=1))


def test_lightningdit_loss_composition():
    x, e = torch.randn(3, 4, 2, 2, dtype=F64), torch.randn(3, 4, 2, 2, dtype=F64)
    y, t = torch.tensor([1, 2, 1000]), torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    pred = torch.randn(3, 4, 2, 2, dtype=F64)
    seen = {}

    def fn(x_t, tt, yy):
        seen.update(x_t=x_t, t=tt, y=yy)
        return pred

    terms, det = LightningDiTLoss()(fn, x, y, t=t, noise=e, return_details=True)
    torch.testing.assert_close(seen["x_t"], t[:, None, None, None] * x + (1 - t[:, None, None, None]) * e)
    u = x - e
    mse = ((pred - u) ** 2).flatten(1).mean(1)
    cos = _manual_cos(pred, u).flatten(1).mean(1)
    torch.testing.assert_close(det["mse_per_sample"], mse, atol=1e-10, rtol=0)
    torch.testing.assert_close(det["cos_per_sample"], cos, atol=1e-10, rtol=0)
    torch.testing.assert_close(terms["total"], (mse.mean() + cos.mean()), atol=1e-10, rtol=0)
    assert set(terms) == {"total", "mse", "cos"}
    no_cos = LightningDiTLoss(cos_weight=0.0)(fn, x, y, t=t, noise=e)
    torch.testing.assert_close(no_cos["total"], mse.mean(), atol=1e-10, rtol=0)


def test_lightningdit_loss_draws_t_and_noise_and_backpropagates():
    w = torch.nn.Parameter(torch.ones(4))
    fn = lambda x_t, t, y: x_t * w[None, :, None, None]
    loss = LightningDiTLoss(TimestepSampler("uniform"))
    terms = loss(fn, torch.randn(2, 4, 2, 2), torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    terms["total"].backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    half = loss(lambda x_t, t, y: x_t.bfloat16(), torch.randn(2, 4, 2, 2), torch.tensor([0, 1]))
    assert half["total"].dtype == torch.float32  # low-precision outputs are reduced in float32
    with pytest.raises(ValueError, match="velocity shape"):
        loss(lambda x_t, t, y: x_t[:, :2], torch.randn(2, 4, 2, 2), torch.tensor([0, 1]))


def test_reg_loss_composition():
    B, C, D, N = 2, 4, 5, 3
    x, e = torch.randn(B, C, 2, 2, dtype=F64), torch.randn(B, C, 2, 2, dtype=F64)
    cls, ce = torch.randn(B, D, dtype=F64), torch.randn(B, D, dtype=F64)
    t, y = torch.tensor([0.25, 0.75], dtype=F64), torch.tensor([7, 1000])
    zs = [torch.randn(B, N, 6, dtype=F64), torch.randn(B, N, 3, dtype=F64)]
    zs_tilde = [torch.randn(B, N, 6, dtype=F64), torch.randn(B, N, 3, dtype=F64)]
    pred, cls_pred = torch.randn(B, C, 2, 2, dtype=F64), torch.randn(B, D, dtype=F64)
    seen = {}

    def fn(x_t, tt, yy, cls_t):
        seen.update(x_t=x_t, cls_t=cls_t)
        return pred, zs_tilde, cls_pred

    terms = REGLoss()(fn, x, cls, y, zs, t=t, noise=e, cls_noise=ce)
    tb = t[:, None, None, None]
    torch.testing.assert_close(seen["x_t"], (1 - tb) * x + tb * e)
    torch.testing.assert_close(seen["cls_t"], (1 - t[:, None]) * cls + t[:, None] * ce)
    mse = ((pred - (e - x)) ** 2).flatten(1).mean(1).mean()
    cls_mse = ((cls_pred - (ce - cls)) ** 2).mean(1).mean()
    proj = 0.0
    for z, zt in zip(zs, zs_tilde):  # official loop: per encoder, per sample, mean over tokens of -cos
        for j in range(B):
            cos = (z[j] * zt[j]).sum(-1) / (z[j].norm(dim=-1) * zt[j].norm(dim=-1))
            proj += -cos.mean()
    proj /= len(zs) * B
    torch.testing.assert_close(terms["mse"], mse, atol=1e-10, rtol=0)
    torch.testing.assert_close(terms["cls_mse"], cls_mse, atol=1e-10, rtol=0)
    torch.testing.assert_close(terms["proj"], proj, atol=1e-10, rtol=0)
    torch.testing.assert_close(terms["total"], (mse + 0.5 * proj + 0.03 * cls_mse), atol=1e-10, rtol=0)


def test_presets_build_and_validate():
    assert isinstance(TRANSPORT_PRESETS["lightningdit"].build_loss(), LightningDiTLoss)
    reg = TRANSPORT_PRESETS["reg"].build_loss()
    assert isinstance(reg, REGLoss) and reg.proj_weight == 0.5 and reg.cls_weight == 0.03
    assert reg.timestep_sampler.distribution_at(10**6) == "uniform"
    ldit = TRANSPORT_PRESETS["lightningdit"].timestep_sampler()
    assert ldit.distribution_at(599_999) == "logit_normal" and ldit.distribution_at(600_000) == "uniform"
    assert TRANSPORT_PRESETS["debug"].build_loss() is not None
    cfg = SAMPLER_PRESETS["lightningdit-cfg"]
    assert (cfg.num_steps, cfg.timestep_shift, cfg.cfg_scale, cfg.cfg_channels) == (250, 0.3, 4.0, 3)
    assert SAMPLER_PRESETS["lightningdit-cfg6"].cfg_scale == 6.0
    r = SAMPLER_PRESETS["reg-cfg"]
    assert (r.method, r.num_steps, r.guidance_high, r.cls_cfg_scale, r.cfg_channels) == ("sde", 250, 0.8, 4.0, None)
    with pytest.raises(ValueError, match="sampling method"):
        SamplerConfig(method="dopri5")
    with pytest.raises(ValueError, match="loss"):
        TransportConfig(loss="edm")
    with pytest.raises(ValueError, match="num_steps"):
        SamplerConfig(num_steps=1)
    assert math.isclose(r.interval().high, 0.8)
