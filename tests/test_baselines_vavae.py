"""VA-VAE (LightningDiT `tokenizer/autoencoder.py` + `vavae.py`) vs `tests/fixtures/official/vavae_tiny.*`.

Our `KLAutoencoder`, loaded through the public converter `vfmvae.tokenizer.from_official_vavae`, must reproduce
the official posterior, sampled latent, decoded image and uint8 conversion in fp32 on the CPU (atol 1e-5).
"""

from __future__ import annotations

import pytest
import torch
from conftest import close, official_fixtures
from PIL import Image

from datamodules.crops import adm_center_crop
from vfmvae.baselines import decode_to_images, encode_images, sample_cpu_rng
from vfmvae.codec import signed_to_unit, to_uint8, uint8_to_signed
from vfmvae.tokenizer import DiagonalGaussian, from_official_vavae

ATOL = 1e-5


fx, model = official_fixtures("vavae_tiny", lambda meta, sd: from_official_vavae(sd, meta["ddconfig"]))


@pytest.fixture(scope="module")
def images01(fx):
    return signed_to_unit(fx[0]["inputs.img"])  # the official input is in [-1, 1]; ours takes [0, 1]


def test_config_matches_the_recorded_derivations(fx, model):
    _, meta, _ = fx
    d = meta["derived"]
    assert model.downsample_factor == d["downsample_factor"]
    assert list(model.latent_shape(meta["ddconfig"]["resolution"])) == d["latent_shape"]
    assert list(model.cfg.channels) == d["level_channels"]
    assert list(model.cfg.encoder_attn_levels) == d["encoder_attn_levels"]
    assert list(model.cfg.decoder_attn_levels) == d["decoder_attn_levels"]
    assert model.kind == "vavae" and model.scaling_factor is None


def test_img_transform_is_our_adm_center_crop(fx):
    """Official `img_transform(p_hflip=0)`: ADM center crop (incl. the BOX-halving loop), ToTensor, Normalize(0.5)."""
    T, meta, _ = fx
    size = meta["ddconfig"]["resolution"]
    assert max(min(h, w) for h, w in meta["raw_sizes_hw"]) >= 2 * size  # one image goes through the BOX loop
    for i in range(len(meta["raw_sizes_hw"])):
        crop = adm_center_crop(Image.fromarray(T[f"inputs.raw_uint8_{i}"].numpy()), size)
        ours = uint8_to_signed(torch.from_numpy(crop.copy()).permute(2, 0, 1))
        close(ours, T["inputs.img"][i], f"img_transform[{i}]", atol=1e-6)


def test_sample_from_stored_eps_and_official_cpu_rng(fx, model, images01):
    T, meta, _ = fx
    with torch.no_grad():
        posterior = model.encode(images01)
    close(posterior.sample(eps=T["inputs.eps"]), T["outputs.z"], "z (stored eps)")
    torch.manual_seed(meta["seed_S"])
    close(encode_images(model, images01), T["outputs.z"], "z (official encode_images: samples, CPU global RNG)")


def test_uint8_conversion(fx, model):
    """`decode_to_images` = clamp(127.5 x + 128) truncated = to_uint8(x, "half_up"), NHWC."""
    T, _, _ = fx
    expected = T["outputs.uint8"]
    assert torch.equal(to_uint8(T["outputs.img"], "half_up").permute(0, 2, 3, 1), expected)
    ours = decode_to_images(model, T["outputs.z"])
    assert ours.dtype == torch.uint8 and ours.shape == expected.shape
    diff = (ours.int() - expected.int()).abs()
    assert diff.max() <= 1  # our decoder differs by ~3e-6, which can move a value across a .5 boundary
    assert (diff > 0).float().mean() < 0.01


def test_clamp_case(fx):
    """logvar from -40 to 28 crosses both clamp limits: std, KL and the CPU-RNG sample follow the clamped logvar."""
    T, meta, _ = fx
    posterior = DiagonalGaussian(T["inputs.clamp_moments"])
    close(posterior.std, T["outputs.clamp_std"], "clamp_std")
    close(posterior.kl(), T["outputs.clamp_kl"], "clamp_kl", rtol=1e-6)
    torch.manual_seed(meta["seed_S"] + 1)
    close(sample_cpu_rng(posterior), T["outputs.clamp_sample"], "clamp_sample")


def test_sample_with_eps_is_the_formula(fx, model, images01):
    T, _, _ = fx
    eps = torch.randn(T["outputs.mean"].shape, generator=torch.Generator().manual_seed(0))
    mean, logvar = T["outputs.moments"].chunk(2, dim=1)
    expected = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    with torch.no_grad():
        close(model.encode(images01).sample(eps=eps), expected, "mean + exp(logvar / 2) * eps")
