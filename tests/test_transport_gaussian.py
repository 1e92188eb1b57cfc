"""Closed-form checks: Gaussian data has an exact velocity field, so samplers must recover the data law.

For data x ~ N(mu, S) and noise e ~ N(0, I) on the linear path (data at one: x_t = t x + (1-t) e),
C_t = t^2 S + (1-t)^2 I, and
    v(x, t) = E[x - e | x_t = x] = mu + (t S - (1-t) I) C_t^{-1} (x - t mu).
Its ODE flow is x_t = t mu + C_t^{1/2} e, so the exact endpoint of each trajectory is
x_1 = mu + S^{1/2} x_0 (all matrices are functions of S and commute). In noise-at-one time
tau = 1 - t the same field reads  v(x, tau) = -mu + (tau I - (1-tau) S) D^{-1} (x - (1-tau) mu)
with D = (1-tau)^2 S + tau^2 I. Both formulas are written out here independently of the code.
"""

import pytest
import torch

from vfmvae.transport import (
    SAMPLER_PRESETS,
    euler_maruyama_sde,
    euler_ode,
    heun_ode,
    ode_time_grid,
    sample,
)

F64 = torch.float64


def gaussian(dim, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    cov = a @ a.T / dim + 0.2 * torch.eye(dim, dtype=F64)
    mu = torch.randn(dim, generator=g, dtype=F64)
    return mu, cov


def sqrtm(s):
    w, q = torch.linalg.eigh(s)
    return q @ torch.diag(w.sqrt()) @ q.T


def v_data_at_one(mu, cov):
    eye = torch.eye(len(mu), dtype=F64)

    def v(x, t):
        t = float(t[0])
        c = t * t * cov + (1 - t) ** 2 * eye
        a = t * cov - (1 - t) * eye
        return (mu + (x.to(F64) - t * mu) @ torch.linalg.solve(c, a).T).to(x.dtype)  # C, A commute: A C^-1 = C^-1 A

    return v


def v_noise_at_one(mu, cov):
    eye = torch.eye(len(mu), dtype=F64)

    def v(x, tau):
        tau = float(tau[0])
        d = (1 - tau) ** 2 * cov + tau * tau * eye
        a = tau * eye - (1 - tau) * cov
        return (-mu + (x.to(F64) - (1 - tau) * mu) @ torch.linalg.solve(d, a).T).to(x.dtype)

    return v


def moments(x):
    x = x.to(F64)
    return x.mean(0), torch.cov(x.T)


N = 8000  # Monte Carlo size: 4-sigma tolerances below stay well under the errors of a wrong sampler


@pytest.fixture(scope="module")
def law():
    return gaussian(3, seed=0)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(N, 3, generator=torch.Generator().manual_seed(1), dtype=F64)


def test_heun_ode_hits_exact_flow_endpoint(law, noise):
    mu, cov = law
    y = torch.zeros(N, dtype=torch.long)
    fn = lambda x, t, y: v_data_at_one(mu, cov)(x, t)
    out = heun_ode(fn, noise, y, ode_time_grid(101, dtype=F64))
    exact = mu + noise @ sqrtm(cov).T
    assert (out - exact).abs().max() < 1e-3


def test_euler_ode_on_official_grid_maps_noise_to_data(law, noise):
    """250 shifted grid points (LightningDiT settings): per-sample endpoint and data moments."""
    mu, cov = law
    y = torch.zeros(N, dtype=torch.long)
    fn = lambda x, t, y: v_data_at_one(mu, cov)(x, t)
    out = sample(SAMPLER_PRESETS["lightningdit"], fn, noise, y)
    exact = mu + noise @ sqrtm(cov).T
    assert (out - exact).abs().max() < 0.05
    m, c = moments(out)
    assert (m - mu).abs().max() < 0.04
    assert (c - cov).abs().max() < 0.08


def test_euler_error_shrinks_with_steps(law, noise):
    mu, cov = law
    y = torch.zeros(N, dtype=torch.long)
    fn = lambda x, t, y: v_data_at_one(mu, cov)(x, t)
    exact = mu + noise @ sqrtm(cov).T
    errs = [(euler_ode(fn, noise, y, ode_time_grid(n, dtype=F64)) - exact).abs().max() for n in (11, 41)]
    assert errs[1] < errs[0] / 3  # first order: ~4x smaller for 4x the steps


def test_ode_in_noise_at_one_convention(law, noise):
    """The same flow integrated in REG time (grid 1 -> 0 with the noise-at-one field)."""
    mu, cov = law
    y = torch.zeros(N, dtype=torch.long)
    fn = lambda x, t, y: v_noise_at_one(mu, cov)(x, t)
    grid = ode_time_grid(101, convention="noise_at_one", dtype=F64)
    assert grid[0] == 1 and grid[-1] == 0
    out = heun_ode(fn, noise, y, grid)
    assert (out - (mu + noise @ sqrtm(cov).T)).abs().max() < 1e-3


def test_reg_sde_maps_noise_to_data_for_latent_and_class_token(noise):
    """REG Euler-Maruyama (250 points to 0.04, then a deterministic step) on a (latent, cls) state."""
    mu_x, cov_x = gaussian(3, seed=2)
    mu_c, cov_c = gaussian(2, seed=3)
    vx, vc = v_noise_at_one(mu_x, cov_x), v_noise_at_one(mu_c, cov_c)
    fn = lambda s, t, y: (vx(s[0], t), vc(s[1], t))
    cls0 = torch.randn(N, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    y = torch.zeros(N, dtype=torch.long)
    x, c = euler_maruyama_sde(fn, (noise, cls0), y, num_steps=250, generator=torch.Generator().manual_seed(5))
    for out, mu, cov in ((x, mu_x, cov_x), (c, mu_c, cov_c)):
        m, s = moments(out)
        assert (m - mu).abs().max() < 0.05
        assert (s - cov).abs().max() < 0.1
    # The stochastic sampler does not just replay the ODE flow.
    assert (x - (mu_x + noise @ sqrtm(cov_x).T)).abs().mean() > 0.05


def test_sde_accepts_data_at_one_velocity(law, noise):
    """A LightningDiT-convention field gives the same SDE path (same noise draws)."""
    mu, cov = law
    y = torch.zeros(N, dtype=torch.long)
    a = euler_maruyama_sde(
        lambda x, t, y: v_noise_at_one(mu, cov)(x, t),
        noise,
        y,
        num_steps=50,
        generator=torch.Generator().manual_seed(7),
    )
    b = euler_maruyama_sde(
        lambda x, t, y: v_data_at_one(mu, cov)(x, t),
        noise,
        y,
        num_steps=50,
        convention="lightningdit",
        generator=torch.Generator().manual_seed(7),
    )
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_sde_is_deterministic_for_a_seed(law):
    mu, cov = law
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(64, dtype=torch.long)
    fn = lambda x, t, y: v_noise_at_one(mu, cov)(x, t)
    run = lambda s: euler_maruyama_sde(fn, z, y, num_steps=20, generator=torch.Generator().manual_seed(s))
    a, b, c = run(11), run(11), run(12)
    assert a.dtype == torch.float32  # back in the input dtype after float64 integration
    assert torch.equal(a, b) and not torch.equal(a, c)
