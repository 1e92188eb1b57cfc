"""Loading frozen VFMs: local round trips, official-fixture weights, presets on the meta device.

Nothing here downloads: checkpoints are written to `tmp_path` from tiny random models first.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vfmvae.vfm import (
    VFM_PRESETS,
    build_vfm,
    get_vfm_config,
    load_official_vfm_state_dict,
    map_official_vfm_state_dict,
    vfm_from_hf_config,
)


def _images(b, side, seed=3):
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _assert_same_outputs(a, b, side, layers=(0, 1, -1)):
    x = _images(2, side)
    with torch.no_grad():
        for u, v in zip(a(x, list(layers)), b(x, list(layers))):
            torch.testing.assert_close(u, v, atol=0, rtol=0)


# --------------------------------------------------------------------------- local round trips
@pytest.mark.parametrize("name,side", [("debug-siglip", 64), ("debug-dinov2", 56)])
def test_save_pretrained_round_trip(name, side, tmp_path):
    torch.manual_seed(0)
    src = build_vfm(name)
    src.save_pretrained(tmp_path / "vfm")
    assert (tmp_path / "vfm" / "config.json").is_file()
    loaded = build_vfm(name, pretrained=tmp_path / "vfm")
    assert type(loaded) is type(src) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    _assert_same_outputs(src, loaded, side)


def test_siglip_from_full_text_vision_checkpoint(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    vision = get_vfm_config("debug-siglip")
    vcfg = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=128, patch_size=16
    )
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    full = SiglipModel(SiglipConfig(vision_config=vcfg, text_config=text)).eval()
    full.save_pretrained(tmp_path / "full")
    vfm = build_vfm("debug-siglip", pretrained=tmp_path / "full")
    assert vfm.hidden_size == vision.hidden_size
    x = _images(1, 128)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=(x - 0.5) / 0.5).last_hidden_state
        (out,) = vfm(x, [-1])
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_timm_pth_round_trip(tmp_path):
    torch.manual_seed(0)
    src = build_vfm("debug-dino-vits")
    src.save_pretrained(tmp_path / "vits.pth")
    loaded = build_vfm("debug-dino-vits", pretrained=tmp_path / "vits.pth")
    _assert_same_outputs(src, loaded, 32)


def test_dinov2_torch_hub_format_pth(tmp_path):
    """A torch.hub DINOv2 state dict (extra `mask_token`, REG-style 8x8 resampled pos-embed)."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    src = build_vfm("debug-dinov2-hub")
    hub_sd = dict(src.backbone.state_dict())
    hub_sd["mask_token"] = torch.zeros(1, 64)  # present in facebookresearch/dinov2 checkpoints
    torch.save(hub_sd, tmp_path / "dinov2_hub.pth")
    # "debug-dinov2" is an HF preset: a file switches it to the timm (hub) backend.
    for name in ("debug-dinov2-hub", "debug-dinov2"):
        loaded = build_vfm(name, pretrained=tmp_path / "dinov2_hub.pth")
        assert loaded.config.backend == "timm"
        _assert_same_outputs(src, loaded, 56)
    # REG/REPA resample the position embedding once to another grid; loading resamples it back.
    hub_sd["pos_embed"] = resample_abs_pos_embed(hub_sd["pos_embed"], [8, 8], num_prefix_tokens=1)
    torch.save({"model": hub_sd}, tmp_path / "dinov2_reg.pth")
    loaded = build_vfm("debug-dinov2-hub", pretrained=tmp_path / "dinov2_reg.pth")
    assert loaded.backbone.pos_embed.shape == (1, 17, 64)


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="allow_download"):
        build_vfm("debug-siglip", pretrained=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not found locally"):
        build_vfm("siglip2-large-patch16-512", pretrained="google/siglip2-large-patch16-512")
    torch.manual_seed(0)
    build_vfm("debug-siglip").save_pretrained(tmp_path / "tiny")
    with pytest.raises(ValueError, match="does not match"):
        build_vfm("siglip2-large-patch16-512", pretrained=tmp_path / "tiny")
    torch.save({"blocks.0.bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys"):
        build_vfm("debug-dino-vits", pretrained=tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="available"):
        build_vfm("siglip-huge")
    with pytest.raises(KeyError, match="valid fields"):
        build_vfm("debug-siglip", config={"hiden_size": 32})


# --------------------------------------------------------------------------- official fixture
def test_official_fixture_siglip_features(fixtures_dir):
    """VFM features of the official Generator (layers [0, 2, -1] after x2 bilinear) reproduced."""
    meta = json.loads((fixtures_dir / "vfmvae_tiny.json").read_text())
    tensors = load_file(str(fixtures_dir / "vfmvae_tiny.safetensors"))
    sd = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    vfm = vfm_from_hf_config(meta["siglip_vision_config"])
    assert (vfm.hidden_size, vfm.num_layers, vfm.patch_size, vfm.image_size) == (64, 3, 16, 128)
    ignored = load_official_vfm_state_dict(vfm, sd)
    assert ignored and all(".head." in k for k in ignored)  # only the unused MAP head is dropped
    layers = meta["generator_kwargs"]["patch_from_layers"]
    scale = meta["generator_kwargs"]["scale_factor"]
    with torch.no_grad():
        feats = vfm(tensors["inputs.img"], layers, scale=scale, interpolation="bilinear", antialias="auto")
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, tensors[f"intermediates.vfm_feature_{i}"], atol=1e-5, rtol=0)
    # The same weights through build_vfm's preset (identical config) also load.
    load_official_vfm_state_dict(build_vfm("debug-siglip"), sd)


def test_official_key_mapping_variants():
    torch.manual_seed(0)
    vfm = build_vfm("debug-siglip", config={"num_layers": 1})
    hf_sd = vfm.backbone.state_dict()
    # transformers-4 checkpoints have one more `vision_model.` level; unrelated keys are skipped.
    v4 = {f"vfm_encoder.encoder.vision_model.vision_model.{k}": v for k, v in hf_sd.items()}
    v4["ldm_adapter.linear_proj.weight"] = torch.zeros(1)
    v4["vfm_encoder.encoder.vision_model.vision_model.head.probe"] = torch.zeros(1, 1, 64)
    mapped, ignored = map_official_vfm_state_dict(v4, vfm)
    assert set(mapped) == {f"backbone.{k}" for k in hf_sd}
    assert ignored == ["vfm_encoder.encoder.vision_model.vision_model.head.probe"]
    with pytest.raises(KeyError, match="no counterpart"):
        map_official_vfm_state_dict({**v4, "vfm_encoder.encoder.vision_model.extra.w": torch.zeros(1)}, vfm)
    partial = {k: v for k, v in v4.items() if "post_layernorm" not in k}
    with pytest.raises(KeyError, match="lacks"):
        load_official_vfm_state_dict(vfm, partial)


def test_vfm_from_hf_config_variants():
    from transformers import Dinov2Config, SiglipConfig

    dino = vfm_from_hf_config(
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14).to_dict()
    )
    assert (dino.hidden_size, dino.num_layers, dino.patch_size, dino.has_cls) == (32, 1, 14, True)
    full = SiglipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        )
    )
    sig = vfm_from_hf_config(full.to_dict(), keep_head=True)
    assert (sig.hidden_size, sig.num_layers, sig.image_size, sig.has_cls) == (32, 2, 32, False)
    assert any(k.startswith("backbone.head.") for k in sig.state_dict())
    with pytest.raises(ValueError, match="model_type"):
        vfm_from_hf_config({"model_type": "clip_vision_model"})


# --------------------------------------------------------------------------- real presets on meta
@pytest.mark.parametrize(
    "name,overrides,expected,pos_shape",
    [
        ("siglip2-large-patch16-512", {"keep_head": True}, 316_742_656, (1024, 1024)),
        ("siglip2-large-patch16-512", {}, 316_742_656 - 12_595_200, (1024, 1024)),  # tokenizer drops the MAP head
        ("dinov2-large", {}, 304.4e6, (1, 1370, 1024)),
        ("dinov2-base", {}, 86.6e6, (1, 1370, 768)),
        ("dinov2-vitl14", {}, 304.4e6, (1, 1370, 1024)),
        ("dinov2-vitb14", {}, 86.6e6, (1, 1370, 768)),
        ("dino-vits16", {}, 21_665_664, (1, 197, 384)),
    ],
)
def test_real_presets_parameter_counts_on_meta(name, overrides, expected, pos_shape):
    with torch.device("meta"):
        vfm = build_vfm(name, config=overrides)
    n = sum(p.numel() for p in vfm.parameters())
    if isinstance(expected, int):
        assert n == expected
    else:
        assert abs(n - expected) < 0.05e6, n
    b = vfm.backbone
    pos = (
        b.embeddings.position_embedding.weight
        if name.startswith("siglip")
        else b.embeddings.position_embeddings
        if vfm.config.backend == "hf"
        else b.pos_embed
    )
    assert tuple(pos.shape) == pos_shape
    assert not any(p.requires_grad for p in vfm.parameters()) and not vfm.training


def test_vfm_yaml_configs_build(repo_root):
    files = sorted((repo_root / "configs" / "vfm").glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        spec = yaml.safe_load(f.read_text())
        assert spec["name"] in VFM_PRESETS, f
        with torch.device("meta"):
            vfm = build_vfm(spec["name"], pretrained=None, config=spec.get("config") or None)
        assert vfm.num_layers == VFM_PRESETS[spec["name"]].num_layers


def test_debug_siglip_preset_equals_fixture_config(fixtures_dir):
    hf = json.loads((fixtures_dir / "vfmvae_tiny.json").read_text())["siglip_vision_config"]
    cfg = get_vfm_config("debug-siglip")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.mlp_hidden_size, cfg.patch_size, cfg.image_size) == (
        hf["hidden_size"],
        hf["num_hidden_layers"],
        hf["num_attention_heads"],
        hf["intermediate_size"],
        hf["patch_size"],
        hf["image_size"],
    )
    assert Path(fixtures_dir).is_dir()
