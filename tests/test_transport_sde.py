"""REG Euler-Maruyama sampler against an independent transcription of the published algorithm.

The reference below follows REG's published sampler literally (docs/design.md, "Sampling and guidance"):
float64 state (latent, class token), grid linspace(1, 0.04, N) ++ [0], per step first the latent noise then the class-token noise
from the global RNG, score s = -((1-t) v + x) / t, drift d = v - (1/2)(2t) s, guidance on the
*drift* of a doubled [cond; null] batch while guidance_low <= t <= guidance_high (class token
with its own scale, conditional if that scale is <= 0), update x + d dt + sqrt(2t) sqrt(|dt|) xi,
then one deterministic step. Our sampler guides the *velocity* through the wrapper; on the
linear path the two agree, which this test checks together with the noise order and grid.
"""

import pytest
import torch
from conftest import official_fixture

from vfmvae.transport import SAMPLER_PRESETS, cast_velocity_fn, euler_maruyama_sde, reg_velocity_fn, sample

F64 = torch.float64


def reference_reg_sde(model_fn, z, cls, y, num_steps, cfg, cls_cfg, low, high, null=1000):
    ts = torch.cat([torch.linspace(1.0, 0.04, num_steps, dtype=F64), torch.zeros(1, dtype=F64)])
    x, c = z.to(F64), cls.to(F64)

    def drift(x, c, t):
        guided = cfg > 1.0 and low <= t <= high
        xin, cin = (torch.cat([x, x]), torch.cat([c, c])) if guided else (x, c)
        yin = torch.cat([y, torch.full_like(y, null)]) if guided else y
        tin = torch.ones(xin.shape[0], dtype=F64) * t
        v, _, cv = model_fn(xin.float(), tin.float(), yin, cin.float())
        v, cv = v.to(F64), cv.to(F64)
        tb = t.item()
        d = v - 0.5 * (2 * tb) * (-((1 - tb) * v + xin) / tb)
        cd = cv - 0.5 * (2 * tb) * (-((1 - tb) * cv + cin) / tb)
        if guided:
            dc, du = d.chunk(2)
            d = du + cfg * (dc - du)
            cdc, cdu = cd.chunk(2)
            cd = cdu + cls_cfg * (cdc - cdu) if cls_cfg > 0 else cdc
        return d, cd

    for i in range(num_steps - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        ex, ec = torch.randn_like(x), torch.randn_like(c)
        d, cd = drift(x, c, t)
        x = x + d * dt + torch.sqrt(2 * t) * ex * torch.sqrt(dt.abs())
        c = c + cd * dt + torch.sqrt(2 * t) * ec * torch.sqrt(dt.abs())
    t, dt = ts[-2], ts[-1] - ts[-2]
    d, cd = drift(x, c, t)
    return x + dt * d, c + dt * cd


class ToyREG:
    """(x, t, y, cls) -> (v, [zs], cls_v): class- and time-dependent, nonlinear in the state."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(1001, 4, generator=g)
        self.b = torch.randn(1001, 3, generator=g)

    def __call__(self, x, t, y, cls):
        v = torch.tanh(x) * self.a[y][:, :, None, None] + t[:, None, None, None] * x.mean(1, keepdim=True)
        cv = torch.sin(cls) * self.b[y] - t[:, None] * cls
        return v, [x.flatten(1)], cv


@pytest.mark.parametrize("cls_cfg", [4.0, 0.0])
def test_reg_sde_matches_reference_with_toy_model(cls_cfg):
    model = ToyREG()
    z, cls = torch.randn(3, 4, 2, 2), torch.randn(3, 3)
    y = torch.tensor([4, 5, 6])
    cfg = SAMPLER_PRESETS["reg-cfg"].replace(num_steps=30, cls_cfg_scale=cls_cfg)
    torch.manual_seed(123)
    ours = sample(cfg, cast_velocity_fn(reg_velocity_fn(model)), (z, cls), y)
    torch.manual_seed(123)
    ref = reference_reg_sde(model, z, cls, y, 30, 4.0, cls_cfg, 0.0, 0.8)
    torch.testing.assert_close(ours[0], ref[0].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], ref[1].float(), atol=1e-5, rtol=0)


def test_reg_sde_without_guidance_matches_reference():
    model = ToyREG()
    z, cls, y = torch.randn(2, 4, 2, 2), torch.randn(2, 3), torch.tensor([1, 1000])
    torch.manual_seed(7)
    ours = sample(SAMPLER_PRESETS["reg"].replace(num_steps=20), cast_velocity_fn(reg_velocity_fn(model)), (z, cls), y)
    torch.manual_seed(7)
    ref = reference_reg_sde(model, z, cls, y, 20, 1.0, 0.0, 0.0, 1.0)
    torch.testing.assert_close(ours[0], ref[0].float(), atol=1e-5, rtol=0)


def test_reg_sde_with_official_tiny_sit(fixtures_dir):
    """The tiny official REG SiT (loaded through our converter) as velocity, guided, 12 grid points."""
    from vfmvae.dit import from_official_reg

    tensors, meta, sd = official_fixture("sit_reg_tiny")
    model = from_official_reg(sd, meta["constructor_kwargs"]).eval()
    fn = lambda x, t, y, c: tuple(model(x, t, y, c))
    g = torch.Generator().manual_seed(0)
    z, cls = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 32, generator=g)
    y = torch.tensor([3, 999])
    with torch.no_grad():
        torch.manual_seed(5)
        ours = sample(SAMPLER_PRESETS["reg-cfg"].replace(num_steps=12), reg_velocity_fn(fn), (z, cls), y)
        torch.manual_seed(5)
        ref = reference_reg_sde(fn, z, cls, y, 12, 4.0, 4.0, 0.0, 0.8)
    torch.testing.assert_close(ours[0], ref[0].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], ref[1].float(), atol=1e-5, rtol=0)
    assert torch.isfinite(ours[0]).all()


def test_sde_trajectory_and_grid_errors():
    fn = lambda x, t, y: -x
    z, y = torch.randn(2, 3), torch.zeros(2, dtype=torch.long)
    traj = euler_maruyama_sde(fn, z, y, num_steps=5, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert len(traj) == 6 and traj[0].dtype == F64
    with pytest.raises(ValueError, match="ending in 0"):
        euler_maruyama_sde(fn, z, y, grid=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="labels"):
        euler_maruyama_sde(fn, z, torch.zeros(3, dtype=torch.long))
