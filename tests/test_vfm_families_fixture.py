"""The tokenizer on DINOv2, EVA-CLIP and MAE vs the official Generator (`tests/fixtures/official/vfmvae_{family}_tiny.*`).

fp32, atol 1e-5. Each fixture is the official `Generator` (legacy=False: non-legacy ConvNeXt path, no
noise_const; attention depth 1) on a tiny random VFM of that family; its `notes` list the wrapper
behaviour the numbers depend on (resize, normalisation, position-table resampling, layer selection,
dropped tokens). MAE: the official wrapper scrambles the token order (a bug we do not copy), so our
features are compared with the fixture's un-shuffled copies and the official moments/image are
reproduced only through the test-only `reproduce_official_token_shuffle`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import close, official_fixture

from vfmvae.tokenizer import config_from_official, from_official
from vfmvae.tokenizer.convert import resolve_vfm_family

ATOL = 1e-5
FAMILIES = ("dinov2", "eva", "mae")


@pytest.fixture(scope="module")
def fixtures(fixtures_dir):
    out = {}
    for family in FAMILIES:
        tensors, meta, sd = official_fixture(f"vfmvae_{family}_tiny")
        model = from_official(sd, meta["generator_kwargs"], meta["vfm_config"], vfm_family=family, vfm_dtype="float32")
        out[family] = (tensors, meta, sd, model)
    return out


def _forward(model, T, family):
    with torch.no_grad():
        if family == "mae":
            with model.vfm.reproduce_official_token_shuffle(T["inputs.mae_noise"]):
                return model(T["inputs.img"], eps=T["inputs.eps"])
        return model(T["inputs.img"], eps=T["inputs.eps"])


@pytest.mark.parametrize("family", FAMILIES)
def test_config_translation_matches_recorded_derivations(fixtures, family):
    _, meta, _, model = fixtures[family]
    cfg, d = model.cfg, meta["derived"]
    assert cfg.vfm_patch_size == d["vfm_patch_size"]
    assert cfg.token_resolution == d["patch_resolutions"][0]
    assert (cfg.z_resolution, cfg.num_ws, cfg.block_channels) == (d["z_resolution"], d["num_ws"], d["block_channels"])
    assert not cfg.legacy and cfg.attn_depths == (1, 1, 1)
    assert model.vfm.config.family == family


@pytest.mark.parametrize("family", FAMILIES)
def test_vfm_features(fixtures, family):
    """Resize mode and factor, normalisation, position table, layer selection and dropped CLS."""
    T, meta, _, model = fixtures[family]
    suffix = "_unshuffled" if family == "mae" else ""  # we keep the grid order (module doc)
    with torch.no_grad():
        feats = model.vfm_features(T["inputs.img"])
    assert len(feats) == len(meta["generator_kwargs"]["patch_from_layers"])
    for i, f in enumerate(feats):
        close(f, T[f"intermediates.vfm_feature_{i}{suffix}"], f"{family} vfm_feature_{i}")


@pytest.mark.parametrize("family", FAMILIES)
def test_moments_z_image_and_multiscale(fixtures, family):
    T, meta, _, model = fixtures[family]
    out = _forward(model, T, family)
    close(out.posterior.moments, T["outputs.moments"], f"{family} moments")
    close(out.posterior.logvar, T["outputs.logvar"].clamp(-30, 20), f"{family} logvar")
    close(out.z, T["outputs.z"], f"{family} z")
    close(out.posterior.kl().mean().reshape(1), T["outputs.kl_loss"], f"{family} kl")
    close(out.image, T["outputs.img"], f"{family} image")
    order = meta["multiscale_order_returned_by_official"]
    assert list(out.multiscale) == order
    for res in order:
        close(out.multiscale[res], T[f"outputs.multiscale_{res}"], f"{family} multiscale_{res}")


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_alone_on_the_official_latent(fixtures, family):
    """legacy=False / depth-1 decoder: lift, mapping and image from the stored z (no VFM involved)."""
    T, meta, sd, _ = fixtures[family]
    model = from_official(sd, meta["generator_kwargs"], meta["vfm_config"], decoder_only=True, vfm_family=family)
    with torch.no_grad():
        out = model.decode(T["outputs.z"], return_multiscale=True)
    close(out.z_lifted, T["intermediates.post_quant_out"], f"{family} post_quant_out")
    close(F.adaptive_avg_pool2d(out.z_lifted, 1).flatten(1), T["intermediates.z_pooled"], f"{family} z_pooled")
    close(out.ws, T["intermediates.ws"], f"{family} ws")
    close(out.image, T["outputs.img"], f"{family} image")


def test_mae_keeps_the_grid_order_the_official_wrapper_scrambles(fixtures):
    """Declared deviation: same tokens, official order = ours gathered by argsort(noise)."""
    T, _, _, model = fixtures["mae"]
    ids = T["intermediates.mae_ids_shuffle"]
    torch.testing.assert_close(ids, torch.argsort(T["inputs.mae_noise"], dim=1), atol=0, rtol=0)
    with torch.no_grad():
        ours = model.vfm_features(T["inputs.img"])
        with model.vfm.reproduce_official_token_shuffle(T["inputs.mae_noise"]):
            shuffled = model.vfm_features(T["inputs.img"])
    for i, (a, b) in enumerate(zip(ours, shuffled)):
        close(torch.gather(a, 1, ids[..., None].expand_as(a)), T[f"intermediates.vfm_feature_{i}"], f"gather {i}")
        close(b, T[f"intermediates.vfm_feature_{i}"], f"shuffled {i}")
    with torch.no_grad():
        moments = model.encode(T["inputs.img"]).moments  # grid order: not the official (scrambled) latent
    assert (moments - T["outputs.moments"]).abs().max() > 1e-2


def test_family_inferred_like_the_official_dispatch(fixtures):
    for family in FAMILIES:
        _, meta, _, _ = fixtures[family]
        g = meta["generator_kwargs"]
        # The official Generator sees the folder name; the config alone says the same.
        assert resolve_vfm_family(dict(g, vfm_name=meta["vfm_folder_name"])) == family
        assert resolve_vfm_family(g, meta["vfm_config"]) == family
        assert resolve_vfm_family(g, meta["vfm_config"], vfm_family="siglip2") == "siglip2"  # explicit wins
    assert resolve_vfm_family({"vfm_name": "Qwen/Qwen2.5-VL-3B-Instruct"}) == "qwen2_5_vl"
    assert resolve_vfm_family({"vfm_name": "google/siglip2-large-patch16-512"}) == "siglip2"
    with pytest.raises(ValueError, match="vfm_family="):
        resolve_vfm_family({"vfm_name": "/ckpt/my-encoder"})
    with pytest.raises(ValueError, match="unknown VFM family"):
        resolve_vfm_family({}, vfm_family="clip")


def test_patch_size_without_a_config_follows_the_official_name_rules(fixtures):
    _, meta, _, _ = fixtures["eva"]
    g = dict(meta["generator_kwargs"], vfm_name=meta["vfm_folder_name"])
    assert config_from_official(g).vfm_patch_size == 14  # 'patch14' in the name
    _, meta, _, _ = fixtures["mae"]
    assert config_from_official(meta["generator_kwargs"], vfm_family="mae").vfm_patch_size == 16
    assert config_from_official(meta["generator_kwargs"], vfm_family="mae").vfm_name == "mae-large"


def test_siglip2_text_family_builds_its_vision_side(fixtures_dir):
    """`siglip2_text` (the text-conditional Generator's VFM): the vision tower is SigLIP and reproduces the
    official features; the text tower's keys are recognised and left to the conditional decoder."""
    from vfmvae.vfm import load_official_vfm_state_dict, vfm_from_official_config

    T, meta, sd = official_fixture("vfmvae_cond_text_tiny")
    vfm = vfm_from_official_config("siglip2_text", meta["vfm_config"])
    ignored = load_official_vfm_state_dict(vfm, sd)
    assert ignored and all(".text_model." in k or ".head." in k for k in ignored)
    g = meta["generator_kwargs"]
    with torch.no_grad():
        feats = vfm(T["inputs.img"], g["patch_from_layers"], scale=g["scale_factor"])
    for i, f in enumerate(feats):
        close(f, T[f"intermediates.vfm_feature_{i}"], f"siglip2_text vfm_feature_{i}")
    assert resolve_vfm_family(g, meta["vfm_config"], vfm_family="siglip2_text") == "siglip2_text"
