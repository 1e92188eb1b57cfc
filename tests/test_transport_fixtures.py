"""Transport against the official LightningDiT fixtures (`tests/fixtures/official/transport_cases.*`).

The fixture was produced by running LightningDiT's `transport/` and `Sampler.sample_ode`
(torchdiffeq Euler) on the tiny official LightningDiT stored in `lightningdit_tiny.*`; we load
that network through our converter and replay the same t, noise and initial states.
"""

import pytest
import torch
from conftest import official_fixture
from safetensors.torch import load_file

from vfmvae.transport import (
    SAMPLER_PRESETS,
    ClassifierFreeGuidance,
    GuidanceInterval,
    LightningDiTLoss,
    TimestepSampler,
    euler_ode,
    lightningdit_doubled_cfg,
    ode_time_grid,
    sample,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def case(fixtures_dir):
    tensors, meta, _ = official_fixture("transport_cases")
    return tensors, meta


@pytest.fixture(scope="module")
def model(fixtures_dir, case):
    from vfmvae.dit import from_official_lightningdit

    tensors = load_file(str(fixtures_dir / "lightningdit_tiny.safetensors"))
    sd = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    net = from_official_lightningdit(sd, case[1]["velocity_model_kwargs"]).eval()
    return net


def velocity(net):
    """The network as a velocity function (LightningDiT time: t = 1 is data)."""
    return lambda x, t, y: net(x, t, y)


def test_time_grid_matches_official(case):
    tensors, meta = case
    assert meta["ode"]["call"].count("timestep_shift=0.3") == 1
    grid = ode_time_grid(10, shift=0.3)
    torch.testing.assert_close(grid, tensors["outputs.ode_time_grid"], atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", ["lognorm", "uniform"])
def test_loss_terms_from_stored_prediction(case, name):
    """Path, target and loss maths alone: replay the stored official prediction as the 'network'."""
    T, meta = case
    seen = {}

    def replay(x_t, t, y):
        seen["x_t"], seen["t"], seen["y"] = x_t, t, y
        return T[f"outputs.{name}.pred"]

    terms, details = LightningDiTLoss(TimestepSampler("uniform")).__call__(
        replay, T["inputs.x1"], T["inputs.y"], t=T[f"inputs.t_{name}"], noise=T["inputs.x0_noise"], return_details=True
    )
    torch.testing.assert_close(seen["x_t"], T[f"outputs.{name}.xt"], atol=1e-6, rtol=0)
    torch.testing.assert_close(details["target"], T[f"outputs.{name}.ut"], atol=1e-6, rtol=0)
    torch.testing.assert_close(details["mse_per_sample"], T[f"outputs.{name}.mse_per_sample"], atol=ATOL, rtol=0)
    torch.testing.assert_close(details["cos_per_sample"], T[f"outputs.{name}.cos_per_sample"], atol=ATOL, rtol=0)
    torch.testing.assert_close(terms["total"], T[f"outputs.{name}.total"][0], atol=ATOL, rtol=0)
    assert abs(terms["total"].item() - meta["training_loss"]["cases"][name]["total"]) < ATOL


@pytest.mark.parametrize("name", ["lognorm", "uniform"])
def test_training_loss_with_official_network(case, model, name):
    T, _ = case
    with torch.no_grad():
        terms, details = LightningDiTLoss()(
            velocity(model),
            T["inputs.x1"],
            T["inputs.y"],
            t=T[f"inputs.t_{name}"],
            noise=T["inputs.x0_noise"],
            return_details=True,
        )
    torch.testing.assert_close(details["pred"], T[f"outputs.{name}.pred"], atol=ATOL, rtol=0)
    torch.testing.assert_close(details["mse_per_sample"], T[f"outputs.{name}.mse_per_sample"], atol=ATOL, rtol=0)
    torch.testing.assert_close(details["cos_per_sample"], T[f"outputs.{name}.cos_per_sample"], atol=ATOL, rtol=0)
    torch.testing.assert_close(terms["total"], T[f"outputs.{name}.total"][0], atol=ATOL, rtol=0)


def test_euler_ode_without_cfg(case, model):
    T, _ = case
    grid = ode_time_grid(10, shift=0.3)
    traj = euler_ode(velocity(model), T["inputs.ode_z"], T["inputs.ode_y"], grid, return_trajectory=True)
    torch.testing.assert_close(torch.stack(traj), T["outputs.ode_nocfg_trajectory"], atol=ATOL, rtol=0)
    # The preset runner (250 grid points cut to 10, shift 0.3, no guidance) gives the same sample.
    cfg = SAMPLER_PRESETS["lightningdit"].replace(num_steps=10)
    torch.testing.assert_close(
        sample(cfg, velocity(model), T["inputs.ode_z"], T["inputs.ode_y"]),
        T["outputs.ode_nocfg_sample"],
        atol=ATOL,
        rtol=0,
    )


def test_euler_ode_with_cfg_wrapper(case, model):
    """Our CFG wrapper (3 channels, interval t >= 0.125) reproduces the guided half."""
    T, _ = case
    guided = ClassifierFreeGuidance(
        velocity(model), 4.0, convention="lightningdit", interval=GuidanceInterval.lightningdit(0.125), cfg_channels=3
    )
    traj = euler_ode(guided, T["inputs.ode_z"], T["inputs.ode_y"], ode_time_grid(10, shift=0.3), return_trajectory=True)
    torch.testing.assert_close(torch.stack(traj), T["outputs.ode_cfg_trajectory"][:, :2], atol=ATOL, rtol=0)
    torch.testing.assert_close(traj[-1], T["outputs.ode_cfg_sample"], atol=ATOL, rtol=0)
    out = sample(
        SAMPLER_PRESETS["lightningdit-cfg"].replace(num_steps=10), velocity(model), T["inputs.ode_z"], T["inputs.ode_y"]
    )
    torch.testing.assert_close(out, T["outputs.ode_cfg_sample"], atol=ATOL, rtol=0)


def test_euler_ode_with_official_doubled_batch(case, model):
    """The whole doubled batch, uncond half included, with the official forward_with_cfg numerics."""
    T, _ = case
    z, y = T["inputs.ode_z"], T["inputs.ode_y"]
    fn = lightningdit_doubled_cfg(velocity(model), 4.0, interval=GuidanceInterval.lightningdit(0.125))
    traj = euler_ode(
        fn,
        torch.cat([z, z]),
        torch.cat([y, torch.full_like(y, 1000)]),
        ode_time_grid(10, shift=0.3),
        return_trajectory=True,
    )
    torch.testing.assert_close(torch.stack(traj), T["outputs.ode_cfg_trajectory"], atol=ATOL, rtol=0)


def test_all_channel_cfg_differs_from_official(case, model):
    """Sanity: guiding all channels is a different sampler (the fixture really tests the quirk)."""
    T, _ = case
    guided = ClassifierFreeGuidance(
        velocity(model), 4.0, convention="lightningdit", interval=GuidanceInterval.lightningdit(0.125)
    )
    out = euler_ode(guided, T["inputs.ode_z"], T["inputs.ode_y"], ode_time_grid(10, shift=0.3))
    assert (out[:, 3:] - T["outputs.ode_cfg_sample"][:, 3:]).abs().max() > 1e-2
    assert torch.isfinite(out).all()


def test_forward_with_cfg_outputs(fixtures_dir, model):
    """Single guided velocity calls of lightningdit_tiny (`forward_with_cfg`, with/without interval)."""
    L = load_file(str(fixtures_dir / "lightningdit_tiny.safetensors"))
    x, y = L["inputs.cfg_x"], L["inputs.cfg_y"]
    n = x.shape[0] // 2
    for tag in ("t0p5", "t0p05"):
        t = L[f"inputs.cfg_t_{tag}"]
        with torch.no_grad():
            for interval, key in ((GuidanceInterval.lightningdit(0.125), "interval"), (None, "nointerval")):
                ref = L[f"outputs.forward_with_cfg_{key}_{tag}"]
                doubled = lightningdit_doubled_cfg(velocity(model), 4.0, interval=interval)(x, t, y)
                torch.testing.assert_close(doubled, ref, atol=ATOL, rtol=0)
                wrapped = ClassifierFreeGuidance(
                    velocity(model), 4.0, convention="lightningdit", interval=interval, cfg_channels=3
                )(x[:n], t[:n], y[:n])
                torch.testing.assert_close(wrapped, ref[:n], atol=ATOL, rtol=0)


def test_uniform_draws_follow_official_rng_order(case):
    """Informational: the unmodified official `sample()` drew noise, then uniform t, after manual_seed."""
    T, meta = case
    seen = {}

    def spy(x_t, t, y):
        seen["t"] = t
        return torch.zeros_like(x_t)

    torch.manual_seed(meta["training_loss"]["seed_torch"])
    _, det = LightningDiTLoss(TimestepSampler("uniform"))(spy, T["inputs.x1"], T["inputs.y"], return_details=True)
    torch.testing.assert_close(det["noise"], T["informational.uniform.x0_drawn"], atol=0, rtol=0)
    torch.testing.assert_close(seen["t"], T["informational.uniform.t_drawn"], atol=0, rtol=0)
