"""Per-family behaviour of the VFM wrappers: EVA-CLIP, MAE, the Qwen2.5-VL tower, capability flags.

References are the libraries' own forwards (timm `forward_intermediates`, transformers `ViTMAEModel`
with an explicit `noise`, the Qwen tower on patches flattened here as the official wrapper does),
never the wrapper under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vfmvae.losses import EQUIVARIANCE_PRESETS, EquivarianceConfig
from vfmvae.tokenizer import VFMVAE, VFMVAEConfig
from vfmvae.vfm import (
    EVAVFM,
    MAEVFM,
    HFDinov2VFM,
    Qwen25VLVisionVFM,
    SiglipVFM,
    TimmDinov2VFM,
    build_vfm,
    check_equivariance_supported,
    check_layers_share_grid,
)

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))
CLIP = (torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711]))


def _norm(x, mean_std):
    mean, std = mean_std
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _images(b, h, w=None, seed=1):
    return torch.rand(b, 3, h, w or h, generator=torch.Generator().manual_seed(seed))


def _store(captured, key, pick=lambda out: out):
    """A hook that records `pick(value)` and returns None (so the forward is unchanged)."""

    def hook(module, args, *rest):
        captured.setdefault(key, pick(rest[-1] if rest else args[0]))

    return hook


def _perturbed(name):
    torch.manual_seed(0)
    vfm = build_vfm(name)
    with torch.no_grad():
        for p in vfm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return vfm


@pytest.fixture(scope="module")
def eva():
    return _perturbed("debug-eva")  # EVA-02 CLIP-L architecture: 48 wide, 3 blocks, native 84 px (6x6)


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return build_vfm("debug-mae")  # 48 wide, 3 blocks, patch 16, native 128 px (fixed sin-cos table)


@pytest.fixture(scope="module")
def qwen():
    return _perturbed("debug-qwen2.5-vl")  # 32 wide, 3 blocks, merger 48, window 56 px, full attention in block 2


# --------------------------------------------------------------------------- EVA
def test_eva_layers_match_timm_and_minus_one_has_no_final_norm(eva):
    m, x = eva.backbone, _images(2, 56)  # 4x4 grid: absolute table resampled, RoPE built for the grid
    captured = {}
    hook = m.blocks[0].register_forward_pre_hook(_store(captured, "emb"))
    with torch.no_grad():
        _, inter = m.forward_intermediates(
            _norm(x, CLIP), indices=[0, 1, 2], norm=False, output_fmt="NLC", return_prefix_tokens=True
        )
        out = eva(x, [0, 1, 3, -1])
    hook.remove()
    expected = [captured["emb"][:, 1:], inter[0][0], inter[2][0], inter[2][0]]
    for o, e in zip(out, expected):
        assert o.shape == (2, 16, 48)
        torch.testing.assert_close(o, e, atol=1e-6, rtol=0)
    assert (out[3] - m.norm(out[3])).abs().max() > 1e-2  # -1 is the last block itself, not normalised
    with pytest.raises(ValueError, match="-1 .* only"):
        eva(x, [-2])


def test_eva_tokenizer_resize_is_bilinear_with_clip_statistics(eva):
    x = _images(1, 32)
    ref_in = F.interpolate(x, scale_factor=1.75, mode="bilinear", align_corners=False)
    with torch.no_grad():
        _, inter = eva.backbone.forward_intermediates(_norm(ref_in, CLIP), indices=[2], norm=False, output_fmt="NLC")
        (out,) = eva(x, [-1], scale=1.75)
    torch.testing.assert_close(out, inter[0], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- MAE
def test_mae_keeps_grid_order_and_never_masks(mae):
    m, x = mae.backbone, _images(2, 128)
    L = 64
    captured = {}
    hooks = [
        m.embeddings.register_forward_hook(_store(captured, 0, lambda out: out[0])),
        m.layers[1].register_forward_hook(_store(captured, 2)),
    ]
    with torch.no_grad():
        ref = m(pixel_values=_norm(x, IMAGENET), noise=torch.arange(L, dtype=torch.float32).expand(2, L))
        out = mae(x, [0, 2, -1])
    for h in hooks:
        h.remove()
    assert float(ref.mask.sum()) == 0.0  # mask ratio 0: every token kept
    for o, e in zip(out, [captured[0], captured[2], ref.last_hidden_state]):
        assert o.shape == (2, L, 48)
        torch.testing.assert_close(o, e[:, 1:], atol=1e-6, rtol=0)


def test_mae_mask_ratio_is_forced_to_zero():
    from transformers import ViTMAEConfig, ViTMAEModel

    from vfmvae.vfm import get_vfm_config

    torch.manual_seed(0)
    hf = ViTMAEModel(
        ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=64)
    )
    assert hf.config.mask_ratio == 0.75  # the released default
    vfm = MAEVFM(
        hf,
        get_vfm_config(
            "debug-mae", {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_hidden_size": 64, "image_size": 64}
        ),
    )
    with torch.no_grad():
        (out,) = vfm(_images(1, 64), [-1])
    assert out.shape == (1, 16, 32)


def test_mae_refuses_other_resolutions_and_ambiguous_negative_layers(mae):
    # A random-init MAE still has MAE's fixed sin-cos table: token (row 0, col 1) starts with sin(1).
    assert abs(float(mae.backbone.embeddings.position_embeddings[0, 2, 0]) - 0.8414710) < 1e-6
    with pytest.raises(ValueError, match="cannot change resolution"):
        mae(_images(1, 64), [-1])  # 4x4 grid, the table is 8x8
    with torch.no_grad():
        (out,) = mae(_images(1, 64), [-1], scale=2.0)  # the tokenizer's x2 reaches the native 128 px
    assert out.shape == (1, 64, 48)
    with pytest.raises(ValueError, match="third|block 1"):
        mae(_images(1, 128), [-2])


# --------------------------------------------------------------------------- Qwen2.5-VL
def _official_patchify(img, p=14, m=2, t=2):
    """The official `QwenVisionEncoder._preprocess_image` flattening, restated."""
    B, C, H, W = img.shape
    x = img.unsqueeze(1)
    x = torch.cat([x, x[:, -1:].repeat(1, t - 1, 1, 1, 1)], dim=1)
    x = x.reshape(B, 1, t, C, H // p // m, m, p, W // p // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(B * (H // p) * (W // p), C * t * p * p), torch.tensor([[1, H // p, W // p]] * B)


def test_qwen_grids_widths_and_shapes(qwen):
    x = _images(2, 112, 168)  # patch grid 8x12, merged grid 4x6; 2x3 windows of 2x2 merged units
    with torch.no_grad():
        out = qwen(x, [0, 1, 3, -2, -1])
    assert [tuple(o.shape) for o in out] == [(2, 96, 32)] * 4 + [(2, 24, 48)]
    assert [qwen.token_stride(i) for i in (0, 3, -2, -1)] == [14, 14, 14, 28]
    assert (qwen.layer_dim(1), qwen.layer_dim(-1)) == (32, 48)
    assert qwen.token_grid(112, 168, 1) == (8, 12) and qwen.token_grid(112, 168, -1) == (4, 6)
    torch.testing.assert_close(out[2], out[3], atol=0, rtol=0)  # -2 is block L
    assert not qwen.has_cls and qwen.input_multiple == 28
    with pytest.raises(ValueError, match="multiple of the patch size 28"):
        qwen(_images(1, 98), [-1])
    with pytest.raises(ValueError, match="out of range"):
        qwen(x, [4])


def test_qwen_layer_zero_is_the_patch_embedding_in_row_major_order(qwen):
    x = _images(1, 56, 84)  # 4x6 patches
    with torch.no_grad():
        (out,) = qwen(x, [0])
    xn = _norm(x, CLIP)
    w = qwen.backbone.patch_embed.proj.weight.sum(dim=2)  # two identical frames: the temporal kernel sums
    patches = xn.unfold(2, 14, 14).unfold(3, 14, 14)  # (1, 3, 4, 6, 14, 14), row-major patch grid
    ref = torch.einsum("bchwij,dcij->bhwd", patches, w).reshape(1, 24, 32)
    # Summing the two frames' kernels first reorders a 1176-term fp32 sum: agreement to ~1e-4 relative.
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_qwen_merged_output_is_the_merger_of_the_last_block_and_the_tower_output(qwen):
    x = _images(2, 112, 168)
    h, w = 8, 12
    with torch.no_grad():
        last, merged = qwen(x, [-2, -1])
        # Regroup our row-major last block into 2x2 units (the merger's input layout) and merge.
        units = last.reshape(2, h // 2, 2, w // 2, 2, 32).permute(0, 1, 3, 2, 4, 5).reshape(-1, 32)
        ref_merge = qwen.backbone.merger(units).reshape(2, 24, 48)
        flat, grid = _official_patchify(_norm(x, CLIP))
        ref_tower = qwen.backbone(flat, grid_thw=grid).pooler_output.reshape(2, 24, 48)
    torch.testing.assert_close(merged, ref_merge, atol=1e-5, rtol=0)  # block outputs un-windowed correctly
    torch.testing.assert_close(merged, ref_tower, atol=1e-6, rtol=0)


def test_qwen_is_deterministic_and_images_do_not_interact(qwen):
    x = _images(2, 112)
    with torch.no_grad():
        a = qwen(x, [1, -1])
        b = qwen(x, [1, -1])
        c = qwen(x[1:], [1, -1])
    for u, v, s in zip(a, b, c):
        torch.testing.assert_close(u, v, atol=0, rtol=0)
        torch.testing.assert_close(u[1:], s, atol=1e-5, rtol=0)


def test_qwen_tokenizer_end_to_end_on_block_layers(qwen):
    """The evident intent: block outputs on the 14-px grid feed the head like any ViT (32x32 -> 16x16 at 256 px)."""
    cfg = VFMVAEConfig(
        vfm_name="debug-qwen2.5-vl",
        vfm_hidden_size=32,
        vfm_patch_size=14,
        vfm_scale=1.75,
        vfm_layers=(0, 2, -2),
        level_dims=(8, 8, 8),
        img_resolution=64,
        z_dim=4,
        w_dim=16,
        channel_base=1024,
        channel_max=16,
        num_res_blocks=1,
        fusion_dims=(8, 8, 4, 4),
        attn_depths=(1, 1, 1),
        legacy=False,
    )
    assert check_layers_share_grid(qwen, cfg.vfm_layers, cfg.vfm_hidden_size) == 14
    torch.manual_seed(0)
    model = VFMVAE(cfg, vfm=qwen).eval()
    with torch.no_grad():
        out = model(_images(1, 64), sample=False)
    assert out.posterior.mean.shape == (1, 4, 4, 4) and out.image.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="different token grids"):
        check_layers_share_grid(qwen, (0, -1))
    with pytest.raises(ValueError, match="widths"):
        check_layers_share_grid(qwen, (-1,), hidden_size=32)


# --------------------------------------------------------------------------- capabilities
def test_official_capabilities_per_family():
    # (tokenizer resize, equivariance prior resize + antialias, dynamic resolution): official wrappers.
    table = {
        SiglipVFM: ("bilinear", ("bilinear", True), True),
        HFDinov2VFM: ("bicubic", ("bicubic", True), True),
        TimmDinov2VFM: ("bicubic", ("bicubic", True), True),
        EVAVFM: ("bilinear", ("bilinear", False), True),
        MAEVFM: ("bilinear", ("bilinear", False), False),
        Qwen25VLVisionVFM: ("bicubic", ("bicubic", True), True),
    }
    for cls, (resize, prior, dynamic) in table.items():
        assert (cls.resize_mode, cls.eq_prior_resize, cls.supports_dynamic_resolution) == (resize, prior, dynamic), cls


def test_equivariance_is_refused_where_the_resolution_cannot_change(mae, eva):
    with pytest.raises(ValueError, match="mae VFM cannot change resolution"):
        check_equivariance_supported(mae, EquivarianceConfig())
    with pytest.raises(ValueError, match="use_equivariance_regularization=False"):
        check_equivariance_supported(mae, True)  # the official YAML flag
    for ok in (False, EQUIVARIANCE_PRESETS["off"], EquivarianceConfig(input_scales=()), EQUIVARIANCE_PRESETS["debug"]):
        check_equivariance_supported(mae, ok)  # the latent branch never resizes the VFM input
    check_equivariance_supported(eva, EquivarianceConfig())
    check_equivariance_supported(eva, True)
