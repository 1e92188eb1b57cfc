"""`TokenizerObjective` on the tiny tokenizer and debug discriminators: terms, totals and gradient paths."""

from __future__ import annotations

import pytest
import torch

from vfmvae.losses import EquivarianceSample, TokenizerObjective, get_loss_config
from vfmvae.tokenizer.discriminators import (
    PATCHGAN_PRESETS,
    PROJECTED_DISCRIMINATOR_PRESETS,
    MultiScalePatchGAN,
    ProjectedDiscriminator,
)


class _FixedLPIPS:
    """Stand-in perceptual term (a differentiable function of the images) so no VGG is built here."""

    @staticmethod
    def loss(pred, target):
        return (pred - target).square().mean()


@pytest.fixture(scope="module")
def parts():
    from vfmvae.tokenizer import VFMVAE, get_config

    torch.manual_seed(0)
    model = VFMVAE(get_config("debug", use_vf_projection=True), vfm_config={"compute_dtype": "float32"})
    d = ProjectedDiscriminator(PROJECTED_DISCRIMINATOR_PRESETS["debug"])
    patchgan = MultiScalePatchGAN(PATCHGAN_PRESETS["debug"])
    images = torch.rand(1, 3, 64, 64)  # one image: the 64 px decoder dominates the run time
    return model, d, patchgan, images


@pytest.mark.slow  # end-to-end through the tiny tokenizer (a few seconds of CPU)
def test_stage0_generator_phase(parts):
    model, d, _, images = parts
    objective = TokenizerObjective(get_loss_config("debug"), resolution=64, lpips=_FixedLPIPS(), projected_d=d, seed=1)
    model.zero_grad(set_to_none=True)
    out = objective.generator_phase(model, images, global_nimg=0)
    for name in ("l1", "lpips", "multiscale_l1", "rec", "kl", "vf", "vf_weight", "g_hinge"):
        assert name in out.terms and torch.isfinite(out.terms[name]), name
    expected = (
        out.terms["rec"] + out.terms["g_hinge"] + 1e-6 * out.terms["kl"] + out.terms["vf_weight"] * out.terms["vf"]
    )
    torch.testing.assert_close(out.total, expected)
    assert out.terms["vf_weight"].item() > 0
    out.total.backward()
    assert model.head.last_layer_weight.grad is not None
    assert model.decoder.synthesis is not None and any(p.grad is not None for p in model.decoder.parameters())
    assert all(p.grad is None for p in model.vfm.parameters())


def test_latent_branch_rotates_the_ground_truth(parts, monkeypatch):
    model, d, _, images = parts
    objective = TokenizerObjective(get_loss_config("debug"), resolution=64, lpips=_FixedLPIPS(), projected_d=d)
    monkeypatch.setattr(objective.sampler, "sample", lambda training=True: EquivarianceSample("latent", 1.0, 1))
    _, _, z, decoded, target = objective._forward_tokenizer(model, images, objective.sampler.sample())
    assert target.shape == decoded.image.shape
    torch.testing.assert_close(target, torch.rot90(images, 1, dims=(-1, -2)) * 2 - 1)


@pytest.mark.slow  # end-to-end through the tiny tokenizer (a few seconds of CPU)
def test_stage3_phases_use_patchgan_and_feature_matching(parts):
    model, d, patchgan, images = parts
    objective = TokenizerObjective(get_loss_config("stage3"), resolution=64, projected_d=d, patchgan=patchgan)
    g = objective.generator_phase(model, images, global_nimg=41_000_000)
    assert set(g.terms) >= {"g_hinge", "g_lsgan", "feature_matching", "rec"} and "l1" not in g.terms
    torch.testing.assert_close(
        g.total, g.terms["rec"] + g.terms["g_hinge"] + g.terms["g_lsgan"] + 10 * g.terms["feature_matching"]
    )
    assert g.eq.is_identity  # EQ is off in stage 3
    d.zero_grad(set_to_none=True)
    patchgan.zero_grad(set_to_none=True)
    dres = objective.discriminator_phase(model, images)
    torch.testing.assert_close(dres.total, dres.terms["d_hinge"] + dres.terms["d_lsgan"])
    dres.total.backward()
    assert all(p.grad is not None for p in d.heads.parameters())
    assert any(p.grad is not None for p in patchgan.parameters())


def test_missing_parts_are_named():
    with pytest.raises(ValueError, match="no projected discriminator"):
        TokenizerObjective(get_loss_config("debug"), 64, lpips=_FixedLPIPS())
    with pytest.raises(ValueError, match="invalid at 64 px"):
        TokenizerObjective(get_loss_config("stage0"), 64, lpips=_FixedLPIPS(), projected_d=torch.nn.Identity())
