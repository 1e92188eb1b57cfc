"""Frozen VFM wrapper contract on the tiny presets (vfmvae/vfm/base.py, hf.py, timm_vit.py).

References are computed directly with the underlying transformers / timm model on inputs we
normalise ourselves, never with the wrapper under test.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.vfm import build_vfm, resolve_layer

SIGLIP_MEAN_STD = (torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.5, 0.5, 0.5]))
IMAGENET_MEAN_STD = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))


def _normalise(x, mean_std):
    mean, std = mean_std
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def siglip():
    torch.manual_seed(0)
    return build_vfm("debug-siglip")  # 3 blocks, width 64, patch 16, native 128 px


@pytest.fixture(scope="module")
def dinov2():
    torch.manual_seed(0)
    return build_vfm("debug-dinov2")  # HF Dinov2Model, 2 blocks, patch 14, native 56 px


@pytest.fixture(scope="module")
def dino_vits():
    torch.manual_seed(0)
    return build_vfm("debug-dino-vits")  # timm ViT, 4 blocks, patch 16, native 224 px


@pytest.fixture(scope="module")
def dinov2_hub():
    torch.manual_seed(0)
    return build_vfm("debug-dinov2-hub")  # timm DINOv2 (torch.hub key format), 2 blocks


def _images(b, side, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, side, side, generator=g)


# --------------------------------------------------------------------------- layer convention
def test_resolve_layer_table():
    # Independent restatement of the rule in (docs/design.md, "Frozen networks") for L = 3: -k (k >= 2) is
    # hidden_states[-k + 1].
    hidden = list(range(4))  # stand-ins for hidden_states[0..3]
    for idx in range(0, 4):
        assert resolve_layer(idx, 3) == hidden[idx]
    for k in range(2, 6):
        assert resolve_layer(-k, 3) == hidden[-k + 1]
    assert resolve_layer(-1, 3) == "final"
    for bad in (4, -6, 100):
        with pytest.raises(ValueError, match="out of range"):
            resolve_layer(bad, 3)
    with pytest.raises(TypeError):
        resolve_layer(1.0, 3)


def test_siglip_layers_match_hidden_states_and_post_ln(siglip):
    x = _images(2, 128)
    with torch.no_grad():
        ref = siglip.backbone(pixel_values=_normalise(x, SIGLIP_MEAN_STD), output_hidden_states=True)
        layers = [0, 1, 2, 3, -1, -2, -4, -5]
        out = siglip(x, layers)
    hs = ref.hidden_states
    assert len(hs) == 4
    expected = [hs[0], hs[1], hs[2], hs[3], ref.last_hidden_state, hs[3], hs[1], hs[0]]
    for o, e in zip(out, expected):
        assert o.shape == (2, 64, 64) and o.dtype == torch.float32
        torch.testing.assert_close(o, e, atol=1e-6, rtol=0)
    # -1 is after the post-LayerNorm: equal to post_layernorm(last block), not the last block itself.
    torch.testing.assert_close(out[4], siglip.backbone.post_layernorm(hs[3]), atol=1e-6, rtol=0)
    assert (out[4] - out[5]).abs().max() > 1e-2


def test_dinov2_hf_layers_and_cls(dinov2):
    x = _images(2, 56)
    with torch.no_grad():
        ref = dinov2.backbone(pixel_values=_normalise(x, IMAGENET_MEAN_STD), output_hidden_states=True)
        tokens, cls = dinov2(x, [0, 2, -1, -2], return_cls=True)
    hs = ref.hidden_states
    for o, c, e in zip(tokens, cls, [hs[0], hs[2], ref.last_hidden_state, hs[2]]):
        assert o.shape == (2, 16, 64) and c.shape == (2, 64)
        torch.testing.assert_close(o, e[:, 1:], atol=1e-6, rtol=0)
        torch.testing.assert_close(c, e[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens[2], dinov2.backbone.layernorm(hs[2])[:, 1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("which", ["dino_vits", "dinov2_hub"])
def test_timm_layers_match_forward_intermediates(which, request):
    vfm = request.getfixturevalue(which)
    m = vfm.backbone
    side = vfm.image_size
    x = _images(2, side)
    captured = {}
    hook = m.blocks[0].register_forward_pre_hook(lambda mod, args: captured.setdefault("emb", args[0]))
    with torch.no_grad():
        xn = _normalise(x, IMAGENET_MEAN_STD)
        final, inter = m.forward_intermediates(
            xn, indices=list(range(vfm.num_layers)), norm=False, return_prefix_tokens=True, output_fmt="NLC"
        )
        feats = m.forward_features(xn)
    hook.remove()
    layers = [0] + list(range(1, vfm.num_layers + 1)) + [-1, -2]
    with torch.no_grad():
        tokens, cls = vfm(x, layers, return_cls=True)
    n = (side // vfm.patch_size) ** 2
    emb = captured["emb"]
    expected = [(emb[:, 1:], emb[:, 0])] + [(p, pre[:, 0]) for p, pre in inter]
    expected += [(feats[:, 1:], feats[:, 0]), (inter[-1][0], inter[-1][1][:, 0])]
    for o, c, (ep, ec) in zip(tokens, cls, expected):
        assert o.shape == (2, n, vfm.hidden_size)
        torch.testing.assert_close(o, ep, atol=1e-6, rtol=0)
        torch.testing.assert_close(c, ec, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- resolution / resize
def test_siglip_other_resolution_interpolates_pos_embed(siglip):
    x = _images(1, 64)
    ref_in = F.interpolate(x, size=(192, 256), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = siglip.backbone(pixel_values=_normalise(ref_in, SIGLIP_MEAN_STD), interpolate_pos_encoding=True)
        (out,) = siglip(x, [-1], size=(192, 256))
    assert out.shape == (1, 12 * 16, 64)
    torch.testing.assert_close(out, ref.last_hidden_state, atol=1e-6, rtol=0)


def test_scale_equals_size_and_official_antialias_rule(siglip):
    x = _images(2, 64)
    with torch.no_grad():
        a = siglip(x, [0, -1], scale=2.0)  # the tokenizer's x2 bilinear resize
        b = siglip(x, [0, -1], size=128)
        c = siglip(x, [0, -1], scale=2.0, antialias="auto")  # official: antialias only when shrinking
    for u, v, w in zip(a, b, c):
        assert u.shape == (2, 64, 64)
        torch.testing.assert_close(u, v, atol=1e-6, rtol=0)
        torch.testing.assert_close(u, w, atol=0, rtol=0)
    big = _images(1, 256)
    with torch.no_grad():
        (shrunk,) = siglip(big, [0], scale=0.5, antialias="auto")
        ref_in = F.interpolate(big, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
        ref = siglip.backbone(pixel_values=_normalise(ref_in, SIGLIP_MEAN_STD), output_hidden_states=True)
    torch.testing.assert_close(shrunk, ref.hidden_states[0], atol=1e-6, rtol=0)


def test_dinov2_and_timm_other_resolution(dinov2, dino_vits):
    x = _images(1, 70)  # 5x5 grid at patch 14 instead of the native 4x4
    with torch.no_grad():
        ref = dinov2.backbone(pixel_values=_normalise(x, IMAGENET_MEAN_STD))
        (out,) = dinov2(x, [-1])
    assert out.shape == (1, 25, 64)
    torch.testing.assert_close(out, ref.last_hidden_state[:, 1:], atol=1e-6, rtol=0)
    y = _images(1, 48)  # 3x3 grid at patch 16 instead of 14x14
    with torch.no_grad():
        ref = dino_vits.backbone.forward_features(_normalise(y, IMAGENET_MEAN_STD))
        (out,) = dino_vits(y, [-1])
    assert out.shape == (1, 9, 64)
    torch.testing.assert_close(out, ref[:, 1:], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- freezing and gradients
def test_frozen_and_eval_after_parent_train(siglip, dinov2_hub):
    parent = nn.ModuleDict({"vfm": siglip, "vit": dinov2_hub, "head": nn.Linear(64, 4)})
    parent.train()
    assert parent.training and parent["head"].training
    for vfm in (siglip, dinov2_hub):
        assert not any(m.training for m in vfm.modules())
        assert not any(p.requires_grad for p in vfm.parameters())
    trainable = [n for n, p in parent.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]


@pytest.mark.parametrize("which", ["siglip", "dino_vits"])
def test_gradients_reach_input_never_parameters(which, request):
    vfm = request.getfixturevalue(which)
    x = _images(2, 32).requires_grad_(True)
    tokens = vfm(x, [1, -1], size=64)
    assert tokens[0].requires_grad
    (tokens[0].square().mean() + tokens[1].mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vfm.parameters())
    with torch.no_grad():
        assert not vfm(x, [-1], size=64)[0].requires_grad


# --------------------------------------------------------------------------- CLS, dtype, bad input
def test_cls_handling(siglip, dino_vits):
    assert not siglip.has_cls and dino_vits.has_cls
    with pytest.raises(ValueError, match="no CLS token"):
        siglip(_images(1, 128), [-1], return_cls=True)
    with torch.no_grad():
        tokens, cls = dino_vits(_images(1, 32), [0, -1], return_cls=True)
    assert [c.shape for c in cls] == [(1, 64), (1, 64)] and tokens[0].shape == (1, 4, 64)


def test_compute_dtype_float32_ignores_ambient_autocast(siglip):
    x = _images(1, 64)
    with torch.no_grad():
        ref = siglip(x, [-1])[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = siglip(x, [-1])[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_compute_dtype_bfloat16_runs_under_autocast():
    torch.manual_seed(0)
    ref_vfm = build_vfm("debug-dino-vits", config={"num_layers": 1})
    bf = build_vfm("debug-dino-vits", config={"num_layers": 1, "compute_dtype": "bfloat16"})
    bf.load_state_dict(ref_vfm.state_dict())
    x = _images(1, 32)
    with torch.no_grad():
        a, b = ref_vfm(x, [-1])[0], bf(x, [-1])[0]
    assert b.dtype == torch.float32  # outputs are cast back like the official `.float()`
    assert 0 < (a - b).abs().max() < 0.1  # bf16 rounding, not a different computation


def test_weights_cast_to_bfloat16_still_accept_float_images():
    torch.manual_seed(0)
    vfm = build_vfm("debug-dino-vits", config={"num_layers": 1}).to(torch.bfloat16)
    with torch.no_grad():
        tokens, cls = vfm(_images(1, 32), [0, -1], return_cls=True)
    assert tokens[1].dtype == torch.float32 and cls[1].shape == (1, 64)
    assert torch.isfinite(tokens[1]).all()


def test_bad_inputs_raise_clear_errors(siglip):
    x = _images(1, 64)
    with pytest.raises(TypeError, match="uint8"):
        siglip((x * 255).to(torch.uint8), [0])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        siglip(x[:, :1], [0])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        siglip(x, [0], size=72)
    with pytest.raises(ValueError, match="either `size` or `scale`"):
        siglip(x, [0], size=64, scale=2.0)
    with pytest.raises(ValueError, match="out of range"):
        siglip(x, [4])
    with pytest.raises(ValueError, match="non-empty"):
        siglip(x, [])
    with pytest.raises(ValueError, match="interpolation"):
        siglip(x, [0], scale=2.0, interpolation="lanczos")
