"""`AutoencoderKLVFMVAE` (vfmvae/integrations/diffusers_vae.py): diffusers' AutoencoderKL surface over VFMVAE."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution

from vfmvae.codec import LatentNormalizer, uint8_to_signed, uint8_to_unit
from vfmvae.integrations import AutoencoderKLVFMVAE
from vfmvae.tokenizer import VFMVAE, get_config
from vfmvae.tokenizer.export import VFM_WEIGHTS_NAME, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return VFMVAE(get_config("debug")).eval()


@pytest.fixture(scope="module")
def stats():
    g = torch.Generator().manual_seed(1)
    return {"mean": torch.randn(1, 8, 1, 1, generator=g), "std": 0.5 + torch.rand(1, 8, 1, 1, generator=g)}


@pytest.fixture(scope="module")
def vae(tokenizer, stats):
    return AutoencoderKLVFMVAE.from_tokenizer(tokenizer, latents_stats=stats)


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}  # `_class_name`, `_diffusers_version`


def _images(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_encode_and_decode_are_the_tokenizer_in_diffusers_conventions(vae, tokenizer):
    x = _images()
    out = vae.encode(x)
    dist = out.latent_dist
    assert isinstance(dist, DiagonalGaussianDistribution) and dist.mean.shape == (2, 8, 4, 4)
    ours = tokenizer.encode((x + 1) / 2)  # diffusers' [-1, 1] is the tokenizer's [0, 1]
    for name in ("mean", "logvar", "std"):
        torch.testing.assert_close(getattr(dist, name), getattr(ours, name), atol=0, rtol=0)
    assert torch.equal(dist.mode(), ours.mean)
    expected_kl = 0.5 * (ours.mean**2 + ours.logvar.exp() - 1 - ours.logvar).sum(dim=(1, 2, 3))
    torch.testing.assert_close(dist.kl(), expected_kl)
    (tuple_dist,) = vae.encode(x, return_dict=False)
    assert torch.equal(tuple_dist.mean, dist.mean)

    # 8-bit pixels through the codec: [-1, 1] for the wrapper, [0, 1] for the tokenizer.
    pixels = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    torch.testing.assert_close(
        vae.encode(uint8_to_signed(pixels)).latent_dist.mean,
        tokenizer.encode(uint8_to_unit(pixels)).mean,
        atol=1e-5,
        rtol=0,
    )

    z = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    dec = vae.decode(z)
    assert isinstance(dec, DecoderOutput) and dec.sample.shape == (2, 3, 64, 64)
    assert torch.equal(dec.sample, tokenizer.decode(z))
    (images,) = vae.decode(z, return_dict=False)
    assert torch.equal(images, dec.sample)


@torch.no_grad()
def test_latent_dist_sample_and_forward_follow_diffusers(vae, tokenizer):
    x = _images(4)
    dist = vae.encode(x).latent_dist
    drawn = dist.sample(generator=torch.Generator().manual_seed(5))
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn, dist.mean + torch.exp(0.5 * dist.logvar) * eps, atol=0, rtol=0)
    assert not torch.equal(drawn, dist.sample(generator=torch.Generator().manual_seed(6)))

    assert torch.equal(vae(x).sample, tokenizer.decode(tokenizer.encode((x + 1) / 2).mean))
    sampled = vae(x, sample_posterior=True, generator=torch.Generator().manual_seed(5), return_dict=False)[0]
    assert torch.equal(sampled, tokenizer.decode(drawn))


@torch.no_grad()
def test_slicing_is_exact_and_tiling_is_refused(tokenizer):
    vae = AutoencoderKLVFMVAE.from_tokenizer(tokenizer)
    x, z = _images(7, batch=3), torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(8))
    whole_mean, whole_images = vae.encode(x).latent_dist.mean, vae.decode(z).sample
    vae.enable_slicing()
    torch.testing.assert_close(vae.encode(x).latent_dist.mean, whole_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(vae.decode(z).sample, whole_images, atol=1e-6, rtol=0)
    with pytest.raises(NotImplementedError, match="enable_slicing"):
        vae.enable_tiling()


def test_config_carries_the_latent_statistics(vae, stats, tmp_path):
    cfg = vae.config
    assert (cfg.latent_channels, cfg.sample_size, cfg.scaling_factor, cfg.shift_factor) == (8, 64, 1.0, None)
    assert torch.equal(torch.tensor(cfg.latents_mean), stats["mean"].flatten())
    assert torch.equal(torch.tensor(cfg.latents_std), stats["std"].flatten())
    assert vae.downsample_factor == 16 and vae.dtype == torch.float32 and vae.device.type == "cpu"

    # The documented pipeline formula, written out, and the project's LatentNormalizer agree.
    LatentNormalizer(stats["mean"], stats["std"]).save(tmp_path / "latents_stats.pt")
    scaled = AutoencoderKLVFMVAE.from_tokenizer(vae.tokenizer, tmp_path / "latents_stats.pt", scaling_factor=0.5)
    z = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(9))
    x = scaled.normalize_latents(z)
    torch.testing.assert_close(x, (z - stats["mean"]) * 0.5 / stats["std"])
    torch.testing.assert_close(x, LatentNormalizer(stats["mean"], stats["std"], 0.5).normalize(z))
    torch.testing.assert_close(scaled.denormalize_latents(x), z)
    torch.testing.assert_close(scaled.latent_normalizer.denormalize(x), z)

    plain = AutoencoderKLVFMVAE.from_tokenizer(vae.tokenizer)
    assert plain.config.latents_mean is None and plain.latent_normalizer is None
    assert torch.equal(plain.normalize_latents(z), z)
    with pytest.raises(ValueError, match="shift_factor must be None"):
        AutoencoderKLVFMVAE.from_tokenizer(vae.tokenizer, stats, shift_factor=0.1)
    with pytest.raises(ValueError, match="channels"):
        AutoencoderKLVFMVAE.from_tokenizer(vae.tokenizer, {"mean": torch.zeros(4), "std": torch.ones(4)})
    with pytest.raises(ValueError, match="together"):
        AutoencoderKLVFMVAE(tokenizer=vae.tokenizer, latents_mean=[0.0] * 8)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.encode(_images() + 1.5)


@torch.no_grad()
def test_save_and_load_round_trip_in_a_local_folder(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    loaded = AutoencoderKLVFMVAE.from_pretrained(tmp_path / "vae")
    assert _public(loaded.config) == _public(vae.config)
    state, other = vae.state_dict(), loaded.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    x, z = _images(10), torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(loaded.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean)
    assert torch.equal(loaded.decode(z).sample, vae.decode(z).sample)

    decoder_only = AutoencoderKLVFMVAE.from_pretrained(tmp_path / "vae", decoder_only=True)
    assert not decoder_only.has_encoder and decoder_only.config.latents_mean == vae.config.latents_mean
    assert torch.equal(decoder_only.decode(z).sample, vae.decode(z).sample)
    with pytest.raises(RuntimeError, match="decoder-only"):
        decoder_only.encode(x)

    rebuilt = AutoencoderKLVFMVAE.from_config(vae.config)  # random weights, same architecture
    assert rebuilt.state_dict().keys() == state.keys() and _public(rebuilt.config) == _public(vae.config)


@torch.no_grad()
def test_the_frozen_vfm_is_referenced_not_copied(tokenizer, stats, tmp_path):
    tokenizer.vfm.save_pretrained(tmp_path / "siglip")
    tokenizer.save_pretrained(tmp_path / "export", vfm_pretrained=tmp_path / "siglip")
    # A bare tokenizer export loads too; the statistics come from the caller.
    vae = AutoencoderKLVFMVAE.from_pretrained(tmp_path / "export", latents_stats=stats)
    assert vae.config.latents_std == stats["std"].flatten().tolist()
    vae.save_pretrained(tmp_path / "vae")
    sub = tmp_path / "vae" / "vfmvae"
    assert not (sub / VFM_WEIGHTS_NAME).exists()
    assert json.loads((sub / "config.json").read_text())["vfm"]["pretrained"] == str((tmp_path / "siglip").resolve())
    loaded = AutoencoderKLVFMVAE.from_pretrained(tmp_path / "vae")
    x = _images(12)
    assert torch.equal(loaded.encode(x).latent_dist.mean, tokenizer.encode((x + 1) / 2).mean)
    assert isinstance(load_tokenizer(sub), VFMVAE)  # the subfolder is an ordinary tokenizer export


def test_folders_that_are_not_exports_are_one_line_errors(tmp_path):
    AutoencoderKL(block_out_channels=(32,), norm_num_groups=8).save_config(tmp_path / "sd_vae")
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "sd_vae", ValueError, "is not a VFM-VAE export .*'AutoencoderKL'"),
        (tmp_path / "empty", FileNotFoundError, "config.json is missing"),
        ("some-org/some-vae", FileNotFoundError, "local export folders only"),
    ]
    for path, error, message in cases:
        with pytest.raises(error, match=message) as info:
            AutoencoderKLVFMVAE.from_pretrained(path)
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="revision_x"):
        AutoencoderKLVFMVAE.from_pretrained(tmp_path / "empty", revision_x="main")
