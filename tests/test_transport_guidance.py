"""Classifier-free guidance wrapper: formula, channels, class token, and the interval boundary."""

import pytest
import torch

from vfmvae.transport import (
    SAMPLER_PRESETS,
    ClassifierFreeGuidance,
    GuidanceInterval,
    euler_ode,
    ode_time_grid,
    sample,
)

NULL = 1000


class ToyVelocity:
    """v = x * a(y) + b(y) * t, channel-dependent; records every batch it sees."""

    def __init__(self, channels=5):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(NULL + 1, channels, generator=g, dtype=torch.float64)
        self.b = torch.randn(NULL + 1, channels, generator=g, dtype=torch.float64)
        self.calls = []

    def component(self, x, t, y):
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
        return x * self.a[y].reshape(shape).to(x.dtype) + self.b[y].reshape(shape).to(x.dtype) * t.reshape(
            (-1,) + (1,) * (x.ndim - 1)
        )

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], y.clone()))
        return self.component(x, t, y)


def test_cfg_formula_all_channels_and_first_three():
    toy = ToyVelocity()
    x = torch.randn(4, 5, 2, 2, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    y = torch.tensor([3, 7, 7, 999])
    cond, uncond = toy.component(x, t, y), toy.component(x, t, torch.full_like(y, NULL))
    expected = uncond + 2.5 * (cond - uncond)
    out = ClassifierFreeGuidance(toy, 2.5, convention="lightningdit")(x, t, y)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert toy.calls[-1][0] == 8 and (toy.calls[-1][1] == torch.cat([y, torch.full_like(y, NULL)])).all()
    out3 = ClassifierFreeGuidance(toy, 2.5, convention="lightningdit", cfg_channels=3)(x, t, y)
    torch.testing.assert_close(out3[:, :3], expected[:, :3], atol=1e-12, rtol=0)
    torch.testing.assert_close(out3[:, 3:], cond[:, 3:], atol=0, rtol=0)


def test_scale_one_is_a_passthrough_without_doubling():
    toy = ToyVelocity()
    x, t, y = torch.randn(3, 5, dtype=torch.float64), torch.rand(3, dtype=torch.float64), torch.tensor([1, 2, 3])
    out = ClassifierFreeGuidance(toy, 1.0, convention="reg")(x, t, y)
    assert toy.calls[-1][0] == 3
    torch.testing.assert_close(out, toy.component(x, t, y), atol=0, rtol=0)


def test_class_token_guidance_scales():
    """REG: latent with cfg_scale, class token with cls_cfg_scale; <= 0 keeps the conditional one."""
    toy_x, toy_c = ToyVelocity(4), ToyVelocity(6)
    fn = lambda s, t, y: (toy_x.component(s[0], t, y), toy_c.component(s[1], t, y))
    x, c = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    t, y = torch.full((2,), 0.3, dtype=torch.float64), torch.tensor([5, 6])
    null = torch.full_like(y, NULL)
    ox, oc = ClassifierFreeGuidance(fn, (4.0, 2.0), convention="reg")((x, c), t, y)
    cx, ux = toy_x.component(x, t, y), toy_x.component(x, t, null)
    cc, uc = toy_c.component(c, t, y), toy_c.component(c, t, null)
    torch.testing.assert_close(ox, ux + 4.0 * (cx - ux), atol=1e-12, rtol=0)
    torch.testing.assert_close(oc, uc + 2.0 * (cc - uc), atol=1e-12, rtol=0)
    _, oc0 = ClassifierFreeGuidance(fn, (4.0, 0.0), convention="reg")((x, c), t, y)
    torch.testing.assert_close(oc0, cc, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lightningdit_interval_switches_exactly_at_start(dtype):
    """Data at one: guided iff t >= 0.125 (official: skipped when t < cfg_interval_start)."""
    iv = GuidanceInterval.lightningdit(0.125)
    b = torch.tensor(0.125, dtype=dtype)
    below = torch.nextafter(b, torch.tensor(0.0, dtype=dtype))
    t = torch.stack([below, b, torch.nextafter(b, torch.tensor(1.0, dtype=dtype)), torch.tensor(1.0, dtype=dtype)])
    assert iv.active(t, "lightningdit").tolist() == [False, True, True, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reg_interval_switches_exactly_at_high(dtype):
    """Noise at one: guided iff low <= t <= high, both bounds inclusive (REG guidance_low/high)."""
    iv = GuidanceInterval.reg(0.0, 0.8)
    b = torch.tensor(0.8, dtype=dtype)
    t = torch.stack(
        [
            torch.tensor(0.0, dtype=dtype),
            b,
            torch.nextafter(b, torch.tensor(1.0, dtype=dtype)),
            torch.tensor(1.0, dtype=dtype),
        ]
    )
    assert iv.active(t, "reg").tolist() == [True, True, False, False]


def test_interval_across_conventions():
    """An interval stated in REG time applied to a LightningDiT-time velocity (dyadic bounds are exact)."""
    iv = GuidanceInterval(0.0, 0.75, "noise_at_one")
    t_data = torch.tensor([0.25, torch.nextafter(torch.tensor(0.25), torch.tensor(0.0)).item(), 1.0])
    assert iv.active(t_data, "data_at_one").tolist() == [True, False, True]


def test_wrapper_guides_only_inside_interval_per_sample():
    toy = ToyVelocity()
    x = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    t = torch.tensor([0.1, 0.125, 0.9], dtype=torch.float64)
    out = ClassifierFreeGuidance(toy, 3.0, convention="lightningdit", interval=GuidanceInterval.lightningdit())(x, t, y)
    cond, uncond = toy.component(x, t, y), toy.component(x, t, torch.full_like(y, NULL))
    torch.testing.assert_close(out[0], cond[0], atol=0, rtol=0)
    torch.testing.assert_close(out[1:], (uncond + 3.0 * (cond - uncond))[1:], atol=1e-12, rtol=0)


def test_guided_step_count_on_official_lightningdit_grid():
    """250 shifted points: step i is guided iff 0.3 s/(1 - 0.7 s) >= 0.125 with s = i/249, i.e. s >= 0.125/0.3875."""
    toy = ToyVelocity(4)
    cfg = SAMPLER_PRESETS["lightningdit-cfg"]
    sample(cfg, toy, torch.zeros(2, 4), torch.tensor([1, 2]))
    doubled = sum(1 for n, _ in toy.calls if n == 4)
    expected = sum(1 for i in range(249) if i / 249 >= 0.125 / 0.3875)
    assert len(toy.calls) == 249 and doubled == expected == 168  # 81 of 249 steps (32.5 %) unguided


def test_guided_step_count_on_reg_sde_grid():
    """250 points 1 -> 0.04 plus the final step: guided iff t <= 0.8, i.e. 1 - 0.96 i/249 <= 0.8."""
    toy_x, toy_c = ToyVelocity(4), ToyVelocity(3)
    fn = lambda s, t, y: (toy_x(s[0], t, y), toy_c.component(s[1], t, y))
    state = (torch.zeros(2, 4), torch.zeros(2, 3))
    sample(SAMPLER_PRESETS["reg-cfg"], fn, state, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    doubled = sum(1 for n, _ in toy_x.calls if n == 4)
    expected = sum(1 for i in range(250) if 1 - 0.96 * i / 249 <= 0.8)
    assert len(toy_x.calls) == 250 and doubled == expected == 198


def test_ode_with_guidance_is_deterministic():
    toy = ToyVelocity(4)
    g = ClassifierFreeGuidance(
        toy, 4.0, convention="lightningdit", interval=GuidanceInterval.lightningdit(), cfg_channels=3
    )
    z = torch.randn(2, 4, 2, 2)
    a = euler_ode(g, z, torch.tensor([3, 4]), ode_time_grid(10, shift=0.3))
    b = euler_ode(g, z, torch.tensor([3, 4]), ode_time_grid(10, shift=0.3))
    assert torch.equal(a, b)


def test_bad_arguments_name_the_problem():
    toy = ToyVelocity(4)
    with pytest.raises(ValueError, match="cfg_channels"):
        ClassifierFreeGuidance(toy, 4.0, convention="lightningdit", cfg_channels=9)(
            torch.zeros(1, 4), torch.ones(1), torch.tensor([0])
        )
    with pytest.raises(ValueError, match="cfg_channels"):
        ClassifierFreeGuidance(toy, 4.0, convention="lightningdit", cfg_channels=0)
    with pytest.raises(ValueError, match="time convention"):
        ClassifierFreeGuidance(toy, 4.0, convention="sideways")
    with pytest.raises(ValueError, match="low <= high"):
        GuidanceInterval(0.9, 0.1)
    with pytest.raises(ValueError, match="shape"):
        ClassifierFreeGuidance(toy, 4.0, convention="reg")(torch.zeros(2, 4), torch.ones(3), torch.tensor([0, 1]))
