"""Full-size VFM and tokenizer presets per encoder family, built on the `meta` device.

Expected parameter counts are computed here from the published architectures (widths, depths, MLP
sizes, patch sizes, position tables of the public checkpoints), not read from our code:

- DINOv2-L/14 (facebook/dinov2-large): ViT-L, LayerScale, 37x37+1 table, mask token.
- EVA-02-CLIP-L/14-336 (timm eva02_large_patch14_clip_336): SwiGLU MLP of int(1024*8/3) = 2730 with
  its own LayerNorm, separate q/k/v (no k bias), an attention-output LayerNorm, 24x24+1 table; the
  768-d CLIP head is dropped (unused, as SigLIP's MAP head).
- ViT-MAE-L/16 (facebook/vit-mae-large, encoder only): plain ViT-L, 14x14+1 fixed table (32x32+1 at 512).
- Qwen2.5-VL-3B vision tower: 32 blocks of width 1280 (RMSNorm, fused qkv with bias, SwiGLU 3420 with
  bias), a bias-free Conv3d patch embedding (2x14x14), the 2x2 merger (RMSNorm, 5120 -> 5120 -> 2048).
The tokenizer's head and decoder are the paper preset's (docs/design.md, "Tokenizer architecture"):
head 11,592,960 at width 1024, decoder 128,144,952 minus the 38 legacy noise strengths.
"""

from __future__ import annotations

import pytest
import torch

from vfmvae.tokenizer import PRESETS, VFMVAE, get_config
from vfmvae.vfm import VFM_PRESETS, build_vfm, check_layers_share_grid


def lin(i, o, bias=True):
    return i * o + (o if bias else 0)


def vit_l_block(mlp=4096, d=1024, layerscale=False):
    """Pre-norm ViT block: 2 LayerNorms, fused qkv + proj with biases, GELU MLP."""
    return 4 * d + lin(d, 3 * d) + lin(d, d) + lin(d, mlp) + lin(mlp, d) + (2 * d if layerscale else 0)


DINOV2_L = lin(3 * 14 * 14, 1024) + 2 * 1024 + 1370 * 1024 + 24 * vit_l_block(layerscale=True) + 2 * 1024
EVA02_L_BLOCK = (2 * 2048) + lin(1024, 1024) + lin(1024, 1024, bias=False) + lin(1024, 1024) + 2048 + lin(1024, 1024)
EVA02_L_BLOCK += 2 * lin(1024, 2730) + 2 * 2730 + lin(2730, 1024)
EVA02_L = lin(3 * 14 * 14, 1024) + 1024 + 577 * 1024 + 24 * EVA02_L_BLOCK + 2048
MAE_L = lin(3 * 16 * 16, 1024) + 1024 + 24 * vit_l_block() + 2048  # + the position table below
QWEN_BLOCK = 2 * 1280 + lin(1280, 3 * 1280) + lin(1280, 1280) + 2 * lin(1280, 3420) + lin(3420, 1280)
QWEN_3B = 3 * 2 * 14 * 14 * 1280 + 32 * QWEN_BLOCK + 1280 + lin(5120, 5120) + lin(5120, 2048)

VFM_COUNTS = {
    "dinov2-large": DINOV2_L,
    "eva02-large-patch14-clip-336": EVA02_L,
    "mae-large": MAE_L + 197 * 1024,
    "mae-large-512": MAE_L + 1025 * 1024,
    "qwen2.5-vl-3b-vision": QWEN_3B,
}


def head_params(d, level=64, levels=3, z2=64):
    """LatentHead: per level AttnProjection(d -> 64), then AttnProjection(3*64*4 -> 2*z_dim); GeGLU ratio 2."""

    def block(i, o):
        geglu = 2 * o + 2 * lin(o, 2 * o) + lin(2 * o, o)
        return 2 * i + 3 * i * i + 2 * i + lin(o, o) + 2 * i + lin(i, o) + 2 * o + geglu

    return levels * block(d, level) + block(levels * level * 4, z2)


DECODER = 128_144_952 - 38  # legacy=False drops one noise strength per ConvNeXt layer

# preset: (vfm count, vfm width, pixels per token, resize factor). SigLIP2: tests/test_tokenizer_model.py.
TOKENIZERS = {
    "vfmvae-f16d32-dinov2-large": (DINOV2_L, 1024, 14, 1.75),
    "vfmvae-f16d32-eva02-large": (EVA02_L, 1024, 14, 1.75),
    "vfmvae-f16d32-mae-large": (VFM_COUNTS["mae-large-512"], 1024, 16, 2.0),
    "vfmvae-f16d32-qwen2.5-vl": (QWEN_3B, 1280, 14, 1.75),
}


def test_head_formula_reproduces_the_paper_head():
    assert head_params(1024) == 11_592_960


@pytest.mark.parametrize("name", list(VFM_COUNTS))
def test_vfm_preset_parameter_counts_on_meta(name):
    with torch.device("meta"):
        vfm = build_vfm(name)
    assert sum(p.numel() for p in vfm.parameters()) == VFM_COUNTS[name]
    assert not vfm.training and not any(p.requires_grad for p in vfm.parameters())
    assert vfm.config.compute_dtype == "bfloat16" and VFM_PRESETS[name].hub_id


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_tokenizer_preset_parameter_counts_on_meta(name):
    vfm_count, width, stride, scale = TOKENIZERS[name]
    with torch.device("meta"):
        model = VFMVAE(name)
    counts = model.parameter_counts()
    assert counts["vfm"] == vfm_count
    assert counts["head"] == head_params(width)
    assert counts["decoder"] == DECODER
    cfg = get_config(name)
    assert (cfg.vfm_hidden_size, cfg.vfm_patch_size, cfg.vfm_scale) == (width, stride, scale)
    assert cfg.token_resolution == 32 and cfg.z_resolution == 16 and cfg.space_to_depth == 2
    assert check_layers_share_grid(model.vfm, cfg.vfm_layers, cfg.vfm_hidden_size) == stride


def test_every_family_has_a_tokenizer_preset():
    assert get_config("vfmvae-f16d32-siglip2-large") == get_config("vfmvae-f16d32-siglip2")
    families = {VFM_PRESETS[get_config(n).vfm_name].family for n in PRESETS if n != "debug"}
    assert families == {"siglip", "dinov2", "eva", "mae", "qwen2_5_vl"}
