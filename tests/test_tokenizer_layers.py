"""Tokenizer building blocks against independent formulas (written out here, not taken from the code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vfmvae.tokenizer.attention import NullKVSelfAttention
from vfmvae.tokenizer.attn_projection import AttnProjection, ProjectingAttention
from vfmvae.tokenizer.convnext import ModulatedToRGB, SeparableBlurUpsample, modulated_pointwise
from vfmvae.tokenizer.fusion import LatentAdapter
from vfmvae.tokenizer.latent_head import token_space_to_depth
from vfmvae.tokenizer.layers import EqualizedLinear
from vfmvae.tokenizer.posterior import DiagonalGaussian


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_modulated_pointwise_matches_per_sample_weights():
    x, W, s = torch.randn(3, 5, 4, 4), torch.randn(7, 5, 1, 1), torch.randn(3, 5)
    for demod in (True, False):
        ref = []
        for b in range(3):
            wb = W[:, :, 0, 0] * s[b][None, :]  # (O, I)
            if demod:
                wb = wb / wb.norm(dim=1, keepdim=True)
            ref.append(torch.einsum("oi,ihw->ohw", wb, x[b]))
        torch.testing.assert_close(modulated_pointwise(x, W, s, demod), torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_to_rgb_uses_gain_one_over_sqrt_channels():
    layer = ModulatedToRGB(8, 4)
    x, w = torch.randn(2, 8, 3, 3), torch.randn(2, 4)
    s = layer.style(w) / math.sqrt(8)
    ref = torch.einsum("oi,bi,bihw->bohw", layer.weight[:, :, 0, 0], s, x) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x, w), ref, atol=1e-5, rtol=1e-5)


def test_projecting_attention_averages_heads():
    attn = ProjectingAttention(in_dim=12, out_dim=4, num_heads=3)
    with torch.no_grad():
        for p in (attn.q_bias, attn.v_bias):
            p.normal_()
    x = torch.randn(2, 5, 12)
    q, k, v = (x @ attn.qkv.weight.t()).split(12, dim=-1)
    q, v = q + attn.q_bias, v + attn.v_bias
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(a @ v[..., sl])
    ref = attn.out(torch.stack(heads).mean(0))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_projecting_attention_expansion_concatenates_heads():
    attn = ProjectingAttention(in_dim=4, out_dim=12, num_heads=3)
    x = torch.randn(2, 5, 4)
    q, k, v = (x @ attn.qkv.weight.t()).split(12, dim=-1)
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
        heads.append(a @ v[..., sl])
    torch.testing.assert_close(attn(x), attn.out(torch.cat(heads, -1)), atol=1e-5, rtol=1e-5)


def test_attn_projection_layer_layout():
    comp = AttnProjection(64, 8, num_layers=2)
    assert [(b.attn.in_dim, b.attn.out_dim) for b in comp.blocks] == [(64, 64), (64, 8)]
    exp = AttnProjection(8, 128, num_layers=2)
    assert [(b.attn.in_dim, b.attn.out_dim) for b in exp.blocks] == [(8, 128), (128, 128)]
    assert exp.blocks[0].attn.num_heads == 16 and exp(torch.randn(1, 3, 8)).shape == (1, 3, 128)


def test_null_kv_attention_matches_manual_softmax():
    attn = NullKVSelfAttention(dim=8, heads=2)
    with torch.no_grad():
        attn.to_out.weight.normal_()
    x = torch.randn(1, 8, 2, 3)
    n = F.normalize(x, dim=1) * math.sqrt(8)  # gamma = 1
    tok = n.flatten(2)[0].t()  # (6, 8)
    q, k, v = (tok @ m.weight[:, :, 0, 0].t() for m in (attn.to_q, attn.to_k, attn.to_v))
    outs = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        kh = torch.cat([attn.null_kv[0, h][None], k[:, sl]])
        vh = torch.cat([attn.null_kv[1, h][None], v[:, sl]])
        outs.append(torch.softmax(q[:, sl] @ kh.t() / 2.0, dim=-1) @ vh)
    o = torch.cat(outs, dim=1) @ attn.to_out.weight[:, :, 0, 0].t()  # (6, 8)
    torch.testing.assert_close(attn(x), o.t().reshape(1, 8, 2, 3), atol=1e-5, rtol=1e-5)


def test_token_space_to_depth_channel_order():
    B, h, w, C = 1, 4, 6, 3
    grid = torch.arange(B * h * w * C, dtype=torch.float32).view(B, h, w, C)
    out = token_space_to_depth(grid.reshape(B, h * w, C), (h, w), 2)
    assert out.shape == (B, (h // 2) * (w // 2), C * 4)
    # token (i, j) of the output, channel c*4 + dy*2 + dx = input token (2i+dy, 2j+dx), channel c
    for i, j, c, dy, dx in [(0, 0, 0, 0, 1), (1, 2, 2, 1, 0), (1, 1, 1, 1, 1)]:
        assert out[0, i * (w // 2) + j, c * 4 + dy * 2 + dx] == grid[0, 2 * i + dy, 2 * j + dx, c]


def test_posterior_kl_sample_and_clamp():
    mean, logvar = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    logvar[0, 0, 0, 0] = 50.0  # clamped to 20
    post = DiagonalGaussian(torch.cat([mean, logvar], 1))
    lv = logvar.clamp(-30, 20)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * lv).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum((1, 2, 3))
    torch.testing.assert_close(post.kl(), ref, atol=1e-4, rtol=1e-5)
    eps = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(post.sample(eps), mean + (0.5 * lv).exp() * eps)
    assert torch.equal(post.mode(), mean)
    with pytest.raises(ValueError, match="eps shape"):
        post.sample(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="moments"):
        DiagonalGaussian(torch.randn(2, 3, 2, 2))


def test_equalized_linear_effective_weight():
    fc = EqualizedLinear(16, 4, lr_multiplier=0.01, bias_init=1.0)
    x = torch.randn(3, 16)
    ref = x @ (fc.weight * 0.01 / 4.0).t() + fc.bias * 0.01
    torch.testing.assert_close(fc(x), ref)
    torch.testing.assert_close(fc.bias * 0.01, torch.ones(4))  # bias_init survives the lr multiplier


def test_blur_upsampler_kernel_and_constant_preservation():
    up = SeparableBlurUpsample(4, 2, blur_size=5)
    k = torch.tensor([1.0, 4, 6, 4, 1])
    torch.testing.assert_close(up.blur_kernel[0, 0], torch.outer(k, k) / 256)
    # replicate padding + normalised kernel keep a constant map constant
    const = torch.full((1, 2, 6, 6), 3.0)
    torch.testing.assert_close(F.conv2d(F.pad(const, (2,) * 4, mode="replicate"), up.blur_kernel, groups=2), const)
    assert up(torch.randn(1, 4, 3, 5)).shape == (1, 2, 6, 10)


@pytest.mark.parametrize(
    "target,shape", [(4, (1, 6, 4, 4)), (8, (1, 6, 8, 8)), (16, (1, 6, 16, 16)), (32, (1, 6, 32, 32))]
)
def test_latent_adapter_resampling(target, shape):
    adapter = LatentAdapter(in_dim=5, out_dim=6, z_size=16, target_size=target)
    assert adapter(torch.randn(1, 5, 16, 16)).shape == shape


def test_group_norm32_matches_group_norm_and_accepts_single_value_groups():
    from vfmvae.tokenizer.layers import GroupNorm32

    gn = GroupNorm32(4, 8)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(gn(x), F.group_norm(x, 4, gn.weight, gn.bias, gn.eps))
    one = GroupNorm32(8, 8)
    # one value per group: x - mean is ~0, amplified by 1/sqrt(eps); the output is the bias up to rounding
    torch.testing.assert_close(one(torch.randn(1, 8, 1, 1)), one.bias.view(1, 8, 1, 1), atol=1e-3, rtol=0)
