"""Discriminators (docs/design.md, "Tokenizer stages and losses"): parameter counts, gradient paths,
DiffAugment, local BN."""

from __future__ import annotations

import itertools

import pytest
import torch

from vfmvae.tokenizer.discriminators import (
    PATCHGAN_PRESETS,
    PROJECTED_DISCRIMINATOR_PRESETS,
    BatchNormLocal,
    BatchNormLocal2d,
    DiscriminatorHead,
    MultiScalePatchGAN,
    ProjectedDiscriminator,
    ProjectedDiscriminatorConfig,
    build_dino_vit,
    build_heads,
    diff_augment,
)
from vfmvae.tokenizer.discriminators.diffaug import augment_cutout, augment_translation


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- parameter counts (measured on the
# official code)


def test_parameter_counts_match_the_official_measurements():
    cfg = ProjectedDiscriminatorConfig()
    assert _count(DiscriminatorHead(384)) == 1_477_249
    assert _count(build_heads(cfg)) == 7_386_245
    patchgan = MultiScalePatchGAN()
    assert _count(patchgan) == 8_299_587
    assert _count(patchgan.scales[0]) == 2_766_529


def test_dino_vits16_backbone_architecture():
    with torch.device("meta"):  # shapes only: no 21.7 M-parameter random init on CPU
        vit = build_dino_vit(ProjectedDiscriminatorConfig())
    assert _count(vit) == 21_665_664


# ----------------------------------------------------------------------------- projected discriminator


@pytest.fixture(scope="module")
def debug_d():
    torch.manual_seed(0)
    return ProjectedDiscriminator(PROJECTED_DISCRIMINATOR_PRESETS["debug"])


def test_projected_d_gradients_reach_the_input_but_never_the_vit(debug_d):
    d = debug_d.train()
    assert not d.dino.vit.training  # frozen ViT stays in eval when the discriminator trains
    img = (torch.rand(8, 3, 48, 48) * 2 - 1).requires_grad_(True)
    logits = d(img)
    n_tokens = (32 // 8) ** 2
    assert logits.shape == (8, 5 * n_tokens)
    logits.mean().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in d.dino.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())
    d.zero_grad(set_to_none=True)


def test_projected_d_taps_equal_timm_intermediates_with_cls_readout(debug_d):
    vit = debug_d.dino.vit
    x = torch.randn(2, 3, 32, 32)
    taps = debug_d.dino(x)
    cfg = debug_d.config
    # timm's own intermediate API (pre-norm block outputs, with the prefix token returned separately).
    inter = vit.forward_intermediates(
        x,
        indices=list(cfg.tap_blocks),
        return_prefix_tokens=True,
        norm=False,
        output_fmt="NLC",
        intermediates_only=True,
    )
    for tap, (patches, prefix) in zip(taps[:4], inter):
        torch.testing.assert_close(tap, (patches + prefix[:, :1]).transpose(1, 2))
    # Embedding tap: patch embedding + CLS concat + position embedding, CLS added to every token.
    tokens = vit.patch_embed(x)
    cls = vit.cls_token + vit.pos_embed[:, :1]
    expected = (tokens + vit.pos_embed[:, 1:] + cls).transpose(1, 2)
    torch.testing.assert_close(taps[4], expected)


def test_projected_d_input_sizes_and_errors(debug_d):
    d = debug_d.eval()
    for size in (16, 32, 64):  # EQ-downscaled (upsampled to 32), native, larger (cropped or resized)
        assert d(torch.rand(8, 3, size, size) * 2 - 1).shape == (8, 80)
    with pytest.raises(ValueError, match="square"):
        d(torch.zeros(8, 3, 32, 16))
    with pytest.raises(ValueError, match="cannot be split"):
        d(torch.zeros(9, 3, 32, 32))


def test_projected_d_crop_or_resize_keeps_the_native_size(debug_d):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    d = ProjectedDiscriminator(
        ProjectedDiscriminatorConfig(
            **{**PROJECTED_DISCRIMINATOR_PRESETS["debug"].__dict__, "diffaug_policy": (), "p_crop": 1.0}
        ),
        vit=debug_d.dino.vit,
    )
    crop = d.preprocess(x, generator=g) * d.std + d.mean
    # p_crop = 1: a 32x32 window of the [0, 1] image, no resampling.
    windows = [((x + 1) / 2)[..., i : i + 32, j : j + 32] for i in range(33) for j in range(33)]
    assert any(torch.allclose(crop, w, atol=1e-6) for w in windows)


# ----------------------------------------------------------------------------- DiffAugment


def test_diffaugment_keeps_shapes_and_is_identity_at_zero_strength():
    x = torch.rand(4, 3, 20, 24) * 2 - 1
    for r in range(1, 4):
        for policy in itertools.combinations(("color", "translation", "cutout"), r):
            out = diff_augment(x, policy)
            assert out.shape == x.shape
            torch.testing.assert_close(diff_augment(x, policy, strength=0.0), x, atol=1e-6, rtol=0)
    assert not torch.allclose(diff_augment(x, "color,translation,cutout"), x)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        diff_augment(x, "rotate")


def test_translation_is_a_zero_filled_shift_within_an_eighth():
    x = torch.rand(6, 2, 16, 16) + 1.0  # strictly positive, so zero fill is recognisable
    out = augment_translation(x, generator=torch.Generator().manual_seed(3))
    max_shift = 2  # round(16 / 8)
    for b in range(x.shape[0]):
        matches = []
        for dy, dx in itertools.product(range(-max_shift, max_shift + 1), repeat=2):
            ref = torch.zeros_like(x[b])
            src = x[b, :, max(dy, 0) : 16 + min(dy, 0), max(dx, 0) : 16 + min(dx, 0)]
            ref[:, max(-dy, 0) : 16 + min(-dy, 0), max(-dx, 0) : 16 + min(-dx, 0)] = src
            matches.append(torch.equal(out[b], ref))
        assert sum(matches) == 1


def test_cutout_zeroes_one_square_of_a_fifth_of_the_side():
    x = torch.rand(8, 3, 20, 20) + 1.0
    out = augment_cutout(x, generator=torch.Generator().manual_seed(4))
    for b in range(8):
        zero = out[b, 0] == 0
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert 0 < len(rows) <= 4 and 0 < len(cols) <= 4  # side round(0.2 * 20) = 4, clipped at borders
        assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a filled rectangle
        torch.testing.assert_close(out[b][:, ~zero], x[b][:, ~zero])


# ----------------------------------------------------------------------------- local batch norm


def test_batchnorm_local_equals_batchnorm_per_group_of_eight():
    torch.manual_seed(0)
    x = torch.randn(16, 5, 7) * 3 + 1
    bn = BatchNormLocal(5, virtual_batch=8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    ref_bn = torch.nn.BatchNorm1d(5, eps=1e-5).train()
    ref_bn.load_state_dict({"weight": bn.weight.detach(), "bias": bn.bias.detach()}, strict=False)
    expected = torch.cat([ref_bn(x[:8]), ref_bn(x[8:])])
    torch.testing.assert_close(bn(x), expected, atol=1e-5, rtol=1e-5)
    x2 = torch.randn(12, 4, 3, 3)  # 12 samples -> 2 groups of 6
    ref2 = torch.nn.BatchNorm2d(4, eps=1e-5).train()
    torch.testing.assert_close(BatchNormLocal2d(4)(x2), torch.cat([ref2(x2[:6]), ref2(x2[6:])]), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- PatchGAN


def test_patchgan_outputs_intermediate_features_per_scale():
    d = MultiScalePatchGAN(PATCHGAN_PRESETS["debug"])
    img = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    out = d(img)
    assert len(out) == 3 and all(len(scale) == 5 for scale in out)
    assert [scale[-1].shape[1] for scale in out] == [1, 1, 1]
    assert [scale[0].shape[-1] for scale in out] == [33, 17, 9]  # 64 -> 32 -> 16 px inputs, k4 s2 p2
    out[0][-1].mean().backward()
    assert img.grad is not None
    keys = d.official_key_map()
    assert keys["scales.0.stages.0.0.weight"] == "scale2_layer0.0.weight"  # full-res input = official scale2
    assert keys["scales.2.stages.1.1.weight"] == "scale0_layer1.1.weight"


def test_patchgan_conv_init_std():
    torch.manual_seed(0)
    w = MultiScalePatchGAN().scales[0].stages[2][0].weight
    assert abs(w.std().item() - 0.02) < 1e-3


def test_projected_d_uses_the_project_vfm_builder_and_loads_local_weights(tmp_path):
    """`vfm_name` routes through `vfmvae.vfm.build_vfm` (random init or a local file, never a download)."""
    from vfmvae.vfm import build_vfm

    cfg = ProjectedDiscriminatorConfig(
        vit_embed_dim=64, vit_depth=4, tap_blocks=(0, 1, 2, 3), vfm_name="debug-dino-vits", diffaug_policy=()
    )
    torch.manual_seed(0)
    source = build_vfm("debug-dino-vits")
    path = tmp_path / "dino.pth"
    source.save_pretrained(path)
    d_loaded = ProjectedDiscriminator(cfg, vit_weights_path=path).eval()
    d_wrapped = ProjectedDiscriminator(cfg, vit=source).eval()  # a FrozenVFM wrapper is accepted too
    d_loaded.heads.load_state_dict(d_wrapped.heads.state_dict())
    img = torch.rand(2, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(d_loaded(img), d_wrapped(img))
    assert d_loaded(img).shape == (2, 5 * 196)
    with pytest.raises(ValueError, match="does not match the discriminator config"):
        ProjectedDiscriminator(ProjectedDiscriminatorConfig(vfm_name="debug-dino-vits"))
