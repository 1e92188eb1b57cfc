"""DiT building blocks against independent formulas (no fixtures needed)."""

from __future__ import annotations

import math

import pytest
import torch

from vfmvae.dit.layers import PatchEmbed, RMSNorm, TimestepEmbedder, unpatchify
from vfmvae.dit.pos_embed import AxialRoPE2d, sincos_2d_pos_embed


def test_sincos_table_matches_scalar_formula():
    D, G = 8, 3
    table = sincos_2d_pos_embed(D, G, extra_tokens=1)
    assert table.shape == (1 + G * G, D) and table[0].abs().max() == 0
    quarter = D // 4
    for r in range(G):
        for c in range(G):
            row = table[1 + r * G + c]
            for j in range(quarter):
                w = 10000 ** (-j / quarter)
                # First half encodes the column index, second half the row index (official quirk).
                expect = [math.sin(c * w), math.cos(c * w), math.sin(r * w), math.cos(r * w)]
                got = [row[j], row[quarter + j], row[2 * quarter + j], row[3 * quarter + j]]
                for e, g in zip(expect, got):
                    assert abs(e - float(g)) < 1e-6


def test_axial_rope_equals_complex_rotation():
    head_dim, G = 8, 3
    rope = AxialRoPE2d(head_dim, G)
    x = torch.randn(2, 1, G * G, head_dim, dtype=torch.float32)
    out = rope(x)
    axis = head_dim // 2
    freqs = [10000 ** (-2 * i / axis) for i in range(axis // 2)]
    for n in range(G * G):
        r, c = divmod(n, G)
        angles = [r * f for f in freqs] + [c * f for f in freqs]  # row axis first, then column
        pairs = torch.complex(x[..., n, 0::2], x[..., n, 1::2])
        rotated = pairs * torch.polar(torch.ones(len(angles)), torch.tensor(angles))
        torch.testing.assert_close(out[..., n, 0::2], rotated.real, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[..., n, 1::2], rotated.imag, atol=1e-5, rtol=0)


def test_rope_scores_depend_only_on_relative_position():
    rope = AxialRoPE2d(8, 4)
    q, k = torch.randn(8), torch.randn(8)
    tok = lambda r, c: r * 4 + c  # noqa: E731
    rq = rope(q.expand(1, 1, 16, 8).clone())[0, 0]
    rk = rope(k.expand(1, 1, 16, 8).clone())[0, 0]
    s1 = rq[tok(1, 1)] @ rk[tok(0, 2)]
    s2 = rq[tok(3, 2)] @ rk[tok(2, 3)]
    assert abs(float(s1 - s2)) < 1e-4


def test_rmsnorm_formula_and_float32_statistics():
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(3, 5, 16) * 7
    expect = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expect, atol=1e-5, rtol=1e-5)
    big = torch.full((1, 16), 300.0, dtype=torch.float16)  # x**2 overflows float16
    assert torch.isfinite(norm.half()(big)).all()


def test_timestep_sinusoid_formula():
    emb = TimestepEmbedder(4, frequency_dim=6)
    t = torch.tensor([0.0, 0.5])
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(3)]
    expect = torch.tensor([[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in (0.0, 0.5)])
    torch.testing.assert_close(emb.sinusoid(t), expect, atol=1e-6, rtol=0)


def test_unpatchify_inverts_patch_order():
    p, C, S = 2, 3, 4
    x = torch.arange(1 * C * S * S, dtype=torch.float32).reshape(1, C, S, S)
    patches = x.unfold(2, p, p).unfold(3, p, p)  # (1, C, h, w, p, p)
    tokens = patches.permute(0, 2, 3, 4, 5, 1).reshape(1, (S // p) ** 2, p * p * C)
    torch.testing.assert_close(unpatchify(tokens, p, C), x)


def test_patch_embed_rejects_wrong_shape():
    embed = PatchEmbed(8, 2, 4, 16)
    with pytest.raises(ValueError, match="expected latents of shape"):
        embed(torch.zeros(1, 4, 6, 6))
