"""Full-size baseline presets on the meta device, config translation, and strict loading of VA-VAE files."""

from __future__ import annotations

import pytest
import torch
from conftest import official_fixture

from vfmvae.baselines import KLAutoencoder, from_diffusers_config, from_ldm_ddconfig, get_baseline_config
from vfmvae.tokenizer import from_official_vavae


# ---------------------------------------------------------------- an independent parameter count
def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _res(cin: int, cout: int) -> int:  # two GroupNorms, two 3x3 convs, a 1x1 shortcut when the width changes
    return 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3) + (_conv(cin, cout, 1) if cin != cout else 0)


def _attn(c: int) -> int:  # GroupNorm + q, k, v, out (c x c + bias each)
    return 2 * c + 4 * (c * c + c)


def ldm_autoencoder_params(ch, ch_mult, nrb, z, embed, enc_attn, dec_attn) -> tuple[int, int]:
    """(encoder, total) parameters of an LDM/diffusers AutoencoderKL, counted from its published layer list."""
    widths = [ch * m for m in ch_mult]
    n, width, enc = len(widths), ch, _conv(3, ch, 3)
    for i, c in enumerate(widths):
        for _ in range(nrb):
            enc += _res(width, c) + (_attn(c) if i in enc_attn else 0)
            width = c
        enc += _conv(c, c, 3) if i != n - 1 else 0
    enc += 2 * _res(width, width) + _attn(width) + 2 * width + _conv(width, 2 * z, 3)
    dec = _conv(z, widths[-1], 3) + 2 * _res(widths[-1], widths[-1]) + _attn(widths[-1])
    width = widths[-1]
    for i in reversed(range(n)):
        for _ in range(nrb + 1):
            dec += _res(width, widths[i]) + (_attn(widths[i]) if i in dec_attn else 0)
            width = widths[i]
        dec += _conv(width, width, 3) if i != 0 else 0
    dec += 2 * width + _conv(width, 3, 3)
    return enc, enc + _conv(2 * z, 2 * embed, 1) + _conv(embed, z, 1) + dec


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd_vae_ft_ema_on_meta_matches_the_published_size():
    """diffusers' `AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-ema").num_parameters()` = 83,653,863."""
    with torch.device("meta"):
        model = KLAutoencoder("sd-vae-ft-ema")
    assert _count(model) == 83_653_863
    assert _count(model.encoder) == 34_163_592  # encoder alone, from the same release
    assert model.latent_shape(256) == (4, 32, 32) and model.scaling_factor == 0.18215
    assert (_count(model.encoder), _count(model)) == ldm_autoencoder_params(128, (1, 2, 4, 4), 2, 4, 4, (), ())


def test_vavae_f16d32_on_meta_matches_an_independent_count():
    with torch.device("meta"):
        model = KLAutoencoder("vavae-f16d32")
    # LightningDiT vavae_f16d32.yaml: ch 128, ch_mult (1,1,2,2,4), 2 res blocks, attention at 16 px = level 4 of 5
    expected = ldm_autoencoder_params(128, (1, 1, 2, 2, 4), 2, 32, 32, (4,), (4,))
    assert (_count(model.encoder), _count(model)) == expected
    assert expected[1] == 69_836_067
    assert model.latent_shape(256) == (32, 16, 16) and model.scaling_factor is None


def test_f16_shapes_on_a_non_square_image():
    cfg = from_ldm_ddconfig(
        {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 4, "resolution": 64}
    )
    model = KLAutoencoder(cfg).eval()
    with torch.no_grad():
        posterior = model.encode(torch.rand(2, 3, 64, 48))
        assert posterior.mean.shape == (2, 4, 4, 3) == (2, *model.latent_shape(64, 48))
        assert model.decode(posterior.sample()).shape == (2, 3, 64, 48)


def test_ldm_attention_follows_the_static_resolution_not_the_input():
    """Encoder halves `resolution` (floor) per level, decoder doubles `resolution // 2**(n-1)`: they can differ."""
    cfg = from_ldm_ddconfig({"ch": 32, "ch_mult": [1, 1, 1], "resolution": 42, "attn_resolutions": [21, 20]})
    assert cfg.encoder_attn_levels == (1,)  # 42 -> 21 -> 10
    assert cfg.decoder_attn_levels == (1,)  # 10 -> 20 -> 40
    cfg = from_ldm_ddconfig({"ch": 32, "ch_mult": [1, 1, 1], "resolution": 40, "attn_resolutions": [20, 10]})
    assert cfg.encoder_attn_levels == cfg.decoder_attn_levels == (1, 2)
    assert get_baseline_config("vavae-f16d32").encoder_attn_levels == (4,)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="multiple of norm_groups=32"):
        from_ldm_ddconfig({"ch": 16, "ch_mult": [1, 2]})
    with pytest.raises(ValueError, match="give_pre_end"):
        from_ldm_ddconfig({"give_pre_end": True})
    with pytest.raises(ValueError, match="one DownEncoderBlock2D and one UpDecoderBlock2D per entry"):
        from_diffusers_config({"block_out_channels": [32, 64], "up_block_types": ["UpDecoderBlock2D"]})
    with pytest.raises(ValueError, match="only AutoencoderKL"):
        from_diffusers_config({"_class_name": "AutoencoderTiny"})
    with pytest.raises(KeyError, match="unknown baseline tokenizer preset"):
        get_baseline_config("sd-vae-ft-mse-typo")


@pytest.fixture(scope="module")
def vavae_fx(fixtures_dir):
    tensors, meta, _ = official_fixture("vavae_tiny")
    return tensors, meta, {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}


def test_vavae_release_file_nested_state_dict_and_ignored_keys(vavae_fx, tmp_path):
    """The release nests its weights under "state_dict" and carries training-only keys (loss, VF loss)."""
    T, meta, sd = vavae_fx
    release = {
        "state_dict": {
            **sd,
            "loss.discriminator.main.0.weight": torch.zeros(2, 3, 4, 4),
            "foundation_model.model.blocks.0.attn.qkv.weight": torch.zeros(6, 2),
            "linear_proj.weight": torch.zeros(2, 8, 1, 1),
        },
        "global_step": torch.tensor(7),
    }
    path = tmp_path / "vavae-tiny.pt"
    torch.save(release, path)
    model = from_official_vavae(path, meta["ddconfig"])
    assert model.source == str(path) and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.decode(T["outputs.z"]), T["outputs.img"], atol=1e-5, rtol=0)


def test_vavae_keys_and_shapes_must_fit_the_config(vavae_fx):
    _, meta, sd = vavae_fx
    with pytest.raises(KeyError, match=r"unknown keys .*decoder\.up\.1\.attn"):  # attention the config does not have
        from_official_vavae(sd, {**meta["ddconfig"], "attn_resolutions": []})
    with pytest.raises(ValueError, match="shape mismatch"):
        from_official_vavae(sd, {**meta["ddconfig"], "ch": 64})


def test_vavae_yaml_config_and_unsafe_file(vavae_fx, tmp_path):
    """The LightningDiT YAML gives ddconfig + embed_dim; a file that pickles objects is refused with the fix."""
    import argparse

    import yaml

    T, meta, sd = vavae_fx
    cfg_file = tmp_path / "vavae_tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"params": {"embed_dim": 8, "ddconfig": meta["ddconfig"]}}}))
    model = from_official_vavae(sd, cfg_file)
    assert model.latent_channels == 8 and model.cfg.encoder_attn_levels == (1,)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=1.0)}, unsafe)
    with pytest.raises(Exception, match=r"not loaded: it holds Python objects \(argparse.Namespace\).*--trust-pickle"):
        from_official_vavae(unsafe, meta["ddconfig"])
