"""DINOv2 position-table resampling: the transformers rule (tokenizer) vs the timm rule (SE-CKNNA reference).

The same tiny random DINOv2 is written as a transformers folder and, through a key map written here
(independent of the code under test), as a torch.hub `.pth`. Under each rule both backends must
agree; each rule must equal its library's own forward; and the two rules must differ.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vfmvae.vfm import build_se_cknna_reference, build_vfm, get_vfm_config

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
LAYERS = [0, 1, 2, -1]


def _hf_to_hub(sd: dict, num_layers: int) -> dict:
    """transformers-5 `Dinov2Model` keys -> facebookresearch/dinov2 torch.hub keys (fused qkv, ls*.gamma)."""
    e = "embeddings."
    out = {
        "cls_token": sd[e + "cls_token"],
        "pos_embed": sd[e + "position_embeddings"],
        "mask_token": sd[e + "mask_token"],
        "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in range(num_layers):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.qkv.{kind}"] = torch.cat([sd[h + f"attention.{n}_proj.{kind}"] for n in "qkv"])
            out[b + f"attn.proj.{kind}"] = sd[h + f"attention.o_proj.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[b + f"{n}.{kind}"] = sd[h + f"{n}.{kind}"]
        out[b + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A perturbed tiny DINOv2 (native 56 px = 4x4 grid) in both formats."""
    torch.manual_seed(0)
    src = build_vfm("debug-dinov2")
    with torch.no_grad():
        for p in src.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
        src.backbone.embeddings.position_embeddings.normal_()  # a table worth resampling
    root = tmp_path_factory.mktemp("dinov2")
    src.save_pretrained(root / "hf")
    torch.save(_hf_to_hub(src.backbone.state_dict(), src.num_layers), root / "dinov2_hub.pth")
    return root / "hf", root / "dinov2_hub.pth"


def _images(side, seed=1):
    return torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _run(vfm, x):
    with torch.no_grad():
        return vfm(x, LAYERS)


@pytest.mark.parametrize("rule", ["hf", "timm"])
@pytest.mark.parametrize("side", [98, 42, 56])  # 7x7 (upsampled table), 3x3 (downsampled), native 4x4
def test_both_backends_agree_under_each_rule(weights, rule, side):
    folder, pth = weights
    hf = build_vfm("debug-dinov2", pretrained=folder, config={"pos_embed_resize": rule})
    hub = build_vfm("debug-dinov2", pretrained=pth, config={"pos_embed_resize": rule})
    assert (hf.config.backend, hub.config.backend) == ("hf", "timm")
    x = _images(side)
    for a, b in zip(_run(hf, x), _run(hub, x)):
        assert a.shape == (2, (side // 14) ** 2, 64)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_each_rule_is_its_library_own_forward(weights):
    folder, pth = weights
    x = _images(42)  # 3x3 grid: the 4x4 table is shrunk, where antialiasing matters most
    xn = (x - MEAN) / STD
    hf = build_vfm("debug-dinov2", pretrained=folder, config={"pos_embed_resize": "hf"})
    hub = build_vfm("debug-dinov2", pretrained=pth, config={"pos_embed_resize": "timm"})
    with torch.no_grad():
        ref_hf = hf.backbone(pixel_values=xn).last_hidden_state[:, 1:]  # transformers' own interpolation
        ref_timm = hub.backbone.forward_features(xn)[:, 1:]  # timm's own resample_abs_pos_embed
        ours_hf, ours_timm = hf(x, [-1])[0], hub(x, [-1])[0]
    torch.testing.assert_close(ours_hf, ref_hf, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_timm, ref_timm, atol=1e-6, rtol=0)
    rel = (ref_hf - ref_timm).norm() / ref_timm.norm()
    assert rel > 0.01, f"the two rules should differ visibly, relative difference {rel:.2e}"


def test_rules_coincide_at_the_native_grid(weights):
    folder, _ = weights
    a = build_vfm("debug-dinov2", pretrained=folder, config={"pos_embed_resize": "hf"})
    b = build_vfm("debug-dinov2", pretrained=folder, config={"pos_embed_resize": "timm"})
    for u, v in zip(_run(a, _images(56)), _run(b, _images(56))):
        torch.testing.assert_close(u, v, atol=0, rtol=0)


def test_default_rule_per_use_and_independent_of_the_file_format(weights):
    folder, pth = weights
    assert get_vfm_config("dinov2-large").pos_embed_resize == "hf"  # tokenizer: official HF wrapper
    assert get_vfm_config("dinov2-vitl14").pos_embed_resize == "timm"  # torch.hub presets keep timm's rule
    assert build_vfm("debug-dinov2", pretrained=pth).config.pos_embed_resize == "hf"  # a file changes the backend only
    with pytest.raises(ValueError, match="pos_embed_resize"):
        build_vfm("debug-dinov2", config={"pos_embed_resize": "bilinear"})


def test_se_cknna_reference_uses_the_timm_rule_for_both_formats(weights):
    folder, pth = weights
    a = build_se_cknna_reference("debug-dinov2", pretrained=folder)
    b = build_se_cknna_reference("debug-dinov2", pretrained=pth)
    assert a.config.pos_embed_resize == b.config.pos_embed_resize == "timm"
    assert a.config.compute_dtype == "float32"
    x = _images(42)
    with torch.no_grad():
        ref = b.backbone.forward_features((x - MEAN) / STD)[:, 1:]
    for vfm in (a, b):
        with torch.no_grad():
            torch.testing.assert_close(vfm(x, [-1])[0], ref, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="drop pos_embed_resize"):
        build_se_cknna_reference("debug-dinov2", config={"pos_embed_resize": "hf"})
    with pytest.raises(ValueError, match="DINOv2 and SigLIP2 only"):
        build_se_cknna_reference("debug-eva")
    assert build_se_cknna_reference("debug-siglip").config.compute_dtype == "float32"


def test_timm_rule_on_the_hf_backend_leaves_the_module_clean(weights):
    folder, _ = weights
    vfm = build_vfm("debug-dinov2", pretrained=folder, config={"pos_embed_resize": "timm"})
    out = _run(vfm, _images(42))
    assert "interpolate_pos_encoding" not in vars(vfm.backbone.embeddings)  # only shadowed during forward
    twin = copy.deepcopy(vfm)
    for a, b in zip(out, _run(twin, _images(42))):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_resize_of_the_tokenizer_path_is_bicubic(weights):
    """The official DINOv2 wrapper resizes bicubically (no antialias when enlarging) before normalising."""
    folder, _ = weights
    vfm = build_vfm("debug-dinov2", pretrained=folder)
    x = _images(32)
    ref_in = F.interpolate(x, scale_factor=1.75, mode="bicubic", align_corners=False)
    with torch.no_grad():
        ref = vfm.backbone(pixel_values=(ref_in - MEAN) / STD).last_hidden_state[:, 1:]
        (out,) = vfm(x, [-1], scale=1.75)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
