"""VFM-VAE tokenizer vs the official Generator (`tests/fixtures/official/vfmvae_tiny.*`), fp32, atol 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import close, official_fixtures

from vfmvae.tokenizer import VFMVAE, config_from_official, from_official, load_official_state_dict
from vfmvae.tokenizer.convert import convert_state_dict

ATOL = 1e-5


fx, full_model = official_fixtures(
    "vfmvae_tiny",
    lambda meta, sd: from_official(sd, meta["generator_kwargs"], meta["siglip_vision_config"], vfm_dtype="float32"),
    model="full_model",
)


@pytest.fixture(scope="module")
def full_out(fx, full_model):
    T, _, _ = fx
    with torch.no_grad():
        return full_model(T["inputs.img"], eps=T["inputs.eps"])


def test_config_translation_matches_recorded_derivations(fx):
    _, meta, _ = fx
    cfg = config_from_official(meta["generator_kwargs"], meta["siglip_vision_config"])
    d = meta["derived"]
    assert cfg.z_resolution == d["z_resolution"]
    assert cfg.num_ws == d["num_ws"]
    assert cfg.block_resolutions == d["block_resolutions"]
    assert cfg.block_channels == d["block_channels"]
    assert cfg.token_resolution == d["patch_resolutions"][0]


def test_vfm_features(fx, full_out):
    T, _, _ = fx
    assert len(full_out.vfm_features) == 3
    for i, f in enumerate(full_out.vfm_features):
        close(f, T[f"intermediates.vfm_feature_{i}"], f"vfm_feature_{i}")


def test_posterior_and_sampled_z(fx, full_out):
    T, _, _ = fx
    post = full_out.posterior
    close(post.mean, T["outputs.mean"], "mean")
    close(post.moments, T["outputs.moments"], "moments (unclamped logvar)")
    close(post.logvar, T["outputs.logvar"].clamp(-30, 20), "logvar")
    close(full_out.z, T["outputs.z"], "z")
    close(post.kl().mean().reshape(1), T["outputs.kl_loss"], "kl")


def test_decoded_image_and_every_multiscale_output(fx, full_out):
    T, meta, _ = fx
    close(full_out.image, T["outputs.img"], "image")
    order = meta["multiscale_order_returned_by_official"]
    assert list(full_out.multiscale) == order  # largest first, like the official list
    for res in order:
        close(full_out.multiscale[res], T[f"outputs.multiscale_{res}"], f"multiscale_{res}")


def test_vf_projection_reproduces_official_vf_loss(fx, full_model, full_out):
    """VF loss recomputed here from its definition (docs/design.md, "Tokenizer stages and losses": margins 0) on our
    linear_proj(z)."""
    T, _, _ = fx
    feats = full_out.vfm_features[-1]
    B, N, D = feats.shape
    side = int(N**0.5)
    target = F.adaptive_avg_pool2d(feats.transpose(1, 2).reshape(B, D, side, side), full_out.z.shape[-2:])
    with torch.no_grad():
        pred = full_model.head.vf_projection(full_out.z)
    zp = F.normalize(pred.flatten(2), dim=1)
    ft = F.normalize(target.flatten(2), dim=1)
    l_dm = (zp.transpose(1, 2) @ zp - ft.transpose(1, 2) @ ft).abs().mean()
    l_cos = F.relu(1 - (zp * ft).sum(1)).mean()
    close((l_dm + l_cos).reshape(1), T["outputs.vf_loss"], "vf_loss")


def test_decoder_only_path_never_builds_the_vfm(fx):
    T, meta, sd = fx
    model = from_official(sd, meta["generator_kwargs"], meta["siglip_vision_config"], decoder_only=True)
    assert model.vfm is None and model.head is None
    with torch.no_grad():
        out = model.decode(T["outputs.z"], return_multiscale=True)
    close(out.z_lifted, T["intermediates.post_quant_out"], "post_quant_out")
    close(F.adaptive_avg_pool2d(out.z_lifted, 1).flatten(1), T["intermediates.z_pooled"], "z_pooled")
    close(out.ws, T["intermediates.ws"], "ws")
    close(out.image, T["outputs.img"], "image")
    with pytest.raises(RuntimeError, match="decoder-only"):
        model.encode(T["inputs.img"])


def test_head_on_stored_vfm_features(fx):
    """Localises head errors independently of the VFM wrapper."""
    T, meta, sd = fx
    cfg = config_from_official(meta["generator_kwargs"], meta["siglip_vision_config"])
    model = VFMVAE(cfg, vfm=torch.nn.Identity())
    model.load_state_dict(convert_state_dict(sd, model), strict=False)
    feats = [T[f"intermediates.vfm_feature_{i}"] for i in range(3)]
    with torch.no_grad():
        moments = model.head.moments(feats, (cfg.token_resolution, cfg.token_resolution))
    close(moments, T["outputs.moments"], "moments")


def test_unknown_official_keys_are_named(fx):
    _, meta, sd = fx
    doctored = dict(sd)
    doctored["synthesis.blocks.0.bogus_layer.weight"] = torch.zeros(1)
    doctored["not_a_module.weight"] = torch.zeros(1)
    with pytest.raises(KeyError) as err:
        from_official(doctored, meta["generator_kwargs"], meta["siglip_vision_config"], decoder_only=True)
    assert "synthesis.blocks.0.bogus_layer.weight" in str(err.value)
    assert "not_a_module.weight" in str(err.value)


def test_unknown_official_vfm_keys_are_named(fx):
    _, meta, sd = fx
    doctored = dict(sd)
    doctored["vfm_encoder.encoder.vision_model.encoder.layers.9.bogus.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="layers.9.bogus"):
        from_official(doctored, meta["generator_kwargs"], meta["siglip_vision_config"], vfm_dtype="float32")


def test_missing_official_keys_are_named(fx):
    _, meta, sd = fx
    doctored = {k: v for k, v in sd.items() if k != "synthesis.blocks.2.convs1.1.gamma"}
    with pytest.raises(KeyError, match=r"blocks\.2\.layers\.2\.layer_scale"):
        from_official(doctored, meta["generator_kwargs"], decoder_only=True)


def test_wrong_fixed_buffer_is_rejected(fx):
    _, meta, sd = fx
    doctored = dict(sd)
    doctored["synthesis.blocks.0.seperate_upsample_conv.blur_weight"] = torch.ones(16, 1, 3, 3)
    with pytest.raises(ValueError, match="blur kernel"):
        from_official(doctored, meta["generator_kwargs"], decoder_only=True)


def test_release_file_with_g_ema_wrapper(fx, tmp_path):
    T, meta, sd = fx
    path = tmp_path / "release.pth"
    torch.save({"G_ema": sd, "D": {"x": torch.zeros(1)}}, path)
    assert set(load_official_state_dict(path)) == set(sd)
    model = from_official(path, meta["generator_kwargs"], decoder_only=True)
    with torch.no_grad():
        close(model.decode(T["outputs.z"]), T["outputs.img"], "image from release file")


def test_unsupported_official_settings_are_rejected(fx):
    _, meta, _ = fx
    kwargs = dict(meta["generator_kwargs"], how_to_compress="conv")
    with pytest.raises(ValueError, match="how_to_compress"):
        config_from_official(kwargs)


def test_default_sampler_draws_like_the_official_one(fx, full_model):
    """On CPU, `torch.manual_seed(S)` then `posterior.sample()` gives the official z (same randn call)."""
    T, meta, _ = fx
    with torch.no_grad():
        post = full_model.encode(T["inputs.img"])
    torch.manual_seed(meta["seed_S"])
    close(post.sample(), T["outputs.z"], "z from seed")


def test_vf_projection_weight_is_dropped_when_unused(fx):
    """A stage-0/1 checkpoint loads into a model without the VF head (official reconstruct: use_vf_loss=False)."""
    T, meta, sd = fx
    kwargs = dict(meta["generator_kwargs"], use_vf_loss=False)
    model = from_official(sd, kwargs, meta["siglip_vision_config"], vfm_dtype="float32")
    assert model.head.vf_projection is None
    with torch.no_grad():
        close(model(T["inputs.img"], eps=T["inputs.eps"]).image, T["outputs.img"], "image")
    # ... but a model that needs the VF head refuses a checkpoint without it
    no_vf = {k: v for k, v in sd.items() if "linear_proj" not in k}
    with pytest.raises(KeyError, match="vf_projection"):
        from_official(no_vf, meta["generator_kwargs"], meta["siglip_vision_config"], vfm_dtype="float32")


def test_unknown_generator_kwargs_are_named(fx):
    _, meta, _ = fx
    with pytest.raises(ValueError, match="z_dimenson"):
        config_from_official(dict(meta["generator_kwargs"], z_dimenson=16))


def test_official_stage_yaml_kwargs_give_the_paper_preset():
    """`G_kwargs` of the official stage-3 YAML (img_resolution/conditional/use_vf_loss are filled in by
    the official train.py; absent here) translate to our paper preset."""
    from vfmvae.tokenizer import get_config

    g_kwargs = {
        "class_name": "networks.generator.Generator",
        "vfm_name": "your_path/huggingface/siglip2-large-patch16-512",
        "scale_factor": 2.0,
        "patch_from_layers": [0, 12, -1],
        "patch_in_dimensions": [1024] * 3,
        "patch_out_dimensions": [64] * 3,
        "compression_mode": "continuous",
        "how_to_compress": "attnproj",
        "how_to_decompress": "attnproj",
        "decompress_factor": 16,
        "attnproj_quant_layers": 1,
        "attnproj_post_quant_layers": 1,
        "resolution_compression_factor": 16,
        "z_dimension": 32,
        "z_pooled_resolution": 1,
        "z_dim_for_mapping_mlp_output": 512,
        "distmat_margin": 0.0,
        "cos_margin": 0.0,
        "distmat_weight": 1.0,
        "cos_weight": 1.0,
        "concat_z_block_indices": [0, 1, 2, 3],
        "concat_z_mapped_dims": [512, 256, 128, 128],
        "how_to_process_concat_z": "unshuffle",
        "activation_for_concat_z": "lrelu",
        "attn_block_indices": [0, 1, 2],
        "attn_depths": [2, 2, 2],
        "use_self_attn": True,
        "use_cross_attn": False,
        "use_convnext": True,
        "use_gaussian_blur": True,
        "add_additional_convnext": True,
        "equivariance_regularization_p_prior": 0.5,
        "equivariance_regularization_p_prior_scale": 0.25,
        "num_blocks": 6,
        "num_fp16_res": 3,
        "train_mode": "train_the_second_half_decoder",
        "img_channels": 3,
        "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512, "num_res_blocks": 2, "architecture": "skip"},
        "legacy": True,
    }
    assert config_from_official(g_kwargs) == get_config("vfmvae-f16d32-siglip2")
