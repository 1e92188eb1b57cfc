"""`DiffusionObjective` against the standalone official losses, and the module's data check.

The objective must give *bitwise* the terms of `LightningDiTLoss` (LightningDiT `train.py`: noise then t,
MSE + cosine) and `REGLoss` (REG `loss.py`: t, latent noise, class-token noise; MSE + 0.5 proj + 0.03 cls) on
the same global-RNG draws; both losses are checked against the official fixtures in test_transport_*.
"""

from __future__ import annotations

import pytest
import torch
from test_diffusion_helpers import TinyLatentDataModule, fit, tiny_module

from vfmvae.dit import build_diffusion_network
from vfmvae.transport import TRANSPORT_PRESETS, DiffusionObjective, LightningDiTLoss, REGLoss


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_latent_only_state_equals_lightningdit_loss():
    torch.manual_seed(0)
    net = build_diffusion_network("lightningdit", "debug")
    x, y = torch.randn(3, 8, 8, 8), torch.tensor([1, 2, 3])
    transport = TRANSPORT_PRESETS["lightningdit"]
    torch.manual_seed(5)
    ours = DiffusionObjective.from_transport(transport)(net, x, y, step=3)
    torch.manual_seed(5)
    ref = LightningDiTLoss(transport.timestep_sampler(), transport.cos_weight, transport.convention)(net, x, y, step=3)
    _same(ours, ref)


def test_class_token_state_equals_reg_loss():
    torch.manual_seed(0)
    net = build_diffusion_network("reg", "debug")
    x, y = torch.randn(2, 8, 8, 8), torch.tensor([4, 5])
    cls, zs = torch.randn(2, 32), [torch.randn(2, 65, 32)]
    align = {"proj_targets": zs, "cls_target": cls, "proj_weight": 0.5, "cls_weight": 0.03}
    transport = TRANSPORT_PRESETS["reg"]
    torch.manual_seed(9)
    ours = DiffusionObjective.from_transport(transport)(net, x, y, align)
    torch.manual_seed(9)
    ref = REGLoss(transport.timestep_sampler(), 0.5, 0.03, transport.convention)(
        lambda *a: tuple(net(*a)), x, cls, y, zs
    )
    _same(ours, ref)


def test_objective_refuses_a_network_in_another_time_convention():
    net = build_diffusion_network("reg", "debug")
    with pytest.raises(ValueError, match="noise_at_one"):
        DiffusionObjective.from_transport(TRANSPORT_PRESETS["lightningdit"])(
            net, torch.zeros(1, 8, 8, 8), torch.zeros(1, dtype=torch.long)
        )


def test_an_unreadable_latent_cache_is_reported_not_swallowed():
    """The module used to swallow every error of ``dm.latent_shape`` (and skip the shape check); only a missing
    attribute means "no latents here" now."""

    class BrokenCache(TinyLatentDataModule):
        @property
        def latent_shape(self):
            raise FileNotFoundError("latent cache manifest.json not found")

    class NoLatents(TinyLatentDataModule):
        @property
        def latent_shape(self):
            raise AttributeError("latent_shape exists in the latents mode only")

    with pytest.raises(FileNotFoundError, match="manifest"):
        fit(tiny_module("lightningdit"), BrokenCache(n=4, batch_size=4), max_steps=1)
    fit(tiny_module("lightningdit"), NoLatents(n=4, batch_size=4), max_steps=1)  # images mode: no check, runs
