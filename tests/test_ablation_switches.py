"""Component-ablation switches (docs/analyses.md, "Component ablation"): each switch changes the architecture
as documented, every row's tiny model trains, the default is the full model, the configs match the rows."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer.ablation import ABLATION_ROWS, ablation_config, ablation_overrides
from vfmvae.tokenizer.attention import SelfAttentionBlock
from vfmvae.tokenizer.config import get_config
from vfmvae.tokenizer.convnext import ModulatedConvNeXtLayer
from vfmvae.tokenizer.decoder import Decoder
from vfmvae.tokenizer.plain_conv import ModulatedConvLayer, modulated_conv

BASE = get_config("debug")


@pytest.fixture(scope="module")
def vfm():
    """One tiny random frozen VFM shared by every row (the rows differ only after it)."""
    return VFMVAE(BASE).vfm


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_row_is_the_unchanged_default():
    paper = get_config("vfmvae-f16d32-siglip2")
    assert paper.use_convnext and ablation_overrides("full", paper) == {}
    assert ablation_config("full", BASE) == BASE
    with pytest.raises(ValueError, match="unknown ablation row"):
        ablation_overrides("nope", BASE)


def test_fusion_switch_injects_the_latent_only_at_the_decoder_input():
    off, on = Decoder(ablation_config("baseline", BASE)), Decoder(ablation_config("fusion", BASE))
    assert sorted(off.synthesis.fusion) == ["0"] and sorted(on.synthesis.fusion) == ["0", "1", "2", "3"]
    ch = BASE.block_channels
    for i in (1, 2, 3):  # the upsampler of block i reads the previous block, plus the adapter's channels when on
        assert off.synthesis.blocks[i].upsample.depthwise.in_channels == ch[i - 1]
        assert on.synthesis.blocks[i].upsample.depthwise.in_channels == ch[i - 1] + BASE.fusion_dims[i]
    assert off.synthesis.blocks[4].upsample.depthwise.in_channels == ch[3]  # never fused: unchanged


def test_block_switch_uses_plain_modulated_convs_without_attention():
    cfg = ablation_config("fusion", BASE)
    dec = Decoder(cfg)
    assert not any(isinstance(m, (ModulatedConvNeXtLayer, SelfAttentionBlock)) for m in dec.modules())
    full = Decoder(ablation_config("blocks", BASE))
    assert not any(isinstance(m, ModulatedConvLayer) for m in full.modules())
    for i, block in enumerate(full.synthesis.blocks):
        assert len(block.attention) == (BASE.attn_depths[i] if i in BASE.attn_block_indices else 0)
    # Layer counts: conv0 + 2 per residual block without ConvNeXt (no extra layers); num_ws follows.
    n = 1 + 2 * BASE.num_res_blocks
    assert all(len(b.layers) == n for b in dec.synthesis.blocks)
    assert dec.synthesis.num_ws == cfg.num_ws == BASE.num_blocks * (n + 1)
    # Parameters of one block's layers by hand: style FC (w_dim -> 3C, + bias), 3x3 weight, bias; residual
    # layers (every second after the first) add a GroupNorm (2C) and a layer scale (C).
    for i, block in enumerate(dec.synthesis.blocks):
        C, W = BASE.block_channels[i], BASE.w_dim
        residual = sum(1 for j in range(n) if j > 0 and j % 2 == 0)
        expected = n * (W * 3 * C + 3 * C + 9 * C * C + C) + residual * 3 * C
        assert _count(block.layers) == expected


def test_modulated_conv_equals_a_per_sample_grouped_conv():
    g = torch.Generator().manual_seed(0)
    x, weight, style = (
        torch.randn(3, 4, 6, 6, generator=g),
        torch.randn(5, 4, 3, 3, generator=g),
        torch.randn(3, 4, generator=g),
    )
    per_sample = weight[None] * style[:, None, :, None, None]  # (B, O, I, k, k), StyleGAN2's formulation
    per_sample = per_sample * (per_sample.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    expected = torch.nn.functional.conv2d(x.reshape(1, 12, 6, 6), per_sample.reshape(15, 4, 3, 3), padding=1, groups=3)
    torch.testing.assert_close(modulated_conv(x, weight, style), expected.reshape(3, 5, 6, 6), atol=1e-5, rtol=1e-5)


def test_multi_layer_switch_reads_one_vfm_layer(vfm):
    one, three = VFMVAE(ablation_config("blocks", BASE), vfm=vfm), VFMVAE(ablation_config("full", BASE), vfm=vfm)
    assert one.cfg.vfm_layers == (-1,) and one.cfg.level_dims == (BASE.level_dims[-1],)
    assert len(one.head.level_projections) == 1 and len(three.head.level_projections) == 3
    s2 = BASE.space_to_depth**2
    assert one.head.final_projection.blocks[0].attn.in_dim == BASE.level_dims[-1] * s2
    assert three.head.final_projection.blocks[0].attn.in_dim == sum(BASE.level_dims) * s2
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    posterior, feats = one.encode(images, return_features=True)
    assert len(feats) == 1
    torch.testing.assert_close(feats[0], three.vfm_features(images)[-1])  # the same (last) VFM layer
    assert posterior.mean.shape == (1, BASE.z_dim, 4, 4)


@pytest.mark.parametrize("row", ABLATION_ROWS)
def test_each_row_trains_forward_backward(row, vfm):
    torch.manual_seed(0)
    model = VFMVAE(ablation_config(row, BASE), vfm=vfm)
    params = [p for n, p in model.named_parameters() if not n.startswith("vfm.") and p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.99))  # the paper's betas
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(10):
        z = model.encode(images).sample(generator=torch.Generator().manual_seed(2))
        out = model.decode(z, return_multiscale=True)
        target = images * 2 - 1
        loss = (out.image - target).abs().mean()
        for side, image in out.multiscale.items():  # every ToRGB head gets its own loss (multi-scale L1)
            loss = (
                loss
                + 0.1 * (image - torch.nn.functional.interpolate(target, size=(side, side), mode="area")).abs().mean()
            )
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("decoder.")}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), row
        opt.step()
    assert losses[-1] < losses[0], (row, losses)


def test_paper_scale_rows_grow_monotonically_and_full_is_the_paper_decoder():
    paper = get_config("vfmvae-f16d32-siglip2")
    with torch.device("meta"):
        counts = [_count(Decoder(ablation_config(r, paper))) for r in ABLATION_ROWS[:3]]
        full = Decoder(paper)
    assert counts[0] < counts[1] < counts[2] == _count(full)  # the feature switch leaves the decoder alone
    assert _count(full.synthesis) == 125_712_312  # the official synthesis network's count


@pytest.mark.parametrize("row", ABLATION_ROWS)
def test_ablation_configs_match_the_rows(repo_root, row):
    cfg = yaml.safe_load((repo_root / "configs" / "ablation" / f"{row}.yaml").read_text())
    args = cfg["model"]["init_args"]
    assert args["stage"] == 1 and args["init_checkpoint"] is None  # weak alignment, from scratch
    assert args["tokenizer"] == "vfmvae-f16d32-siglip2"
    expected = {"legacy": False, **ablation_overrides(row, get_config(args["tokenizer"]))}
    assert args["tokenizer_overrides"] == expected
    assert cfg["trainer"]["max_steps"] == math.ceil(5_000_000 / args["global_batch_size"])
    assert args["export_dir"].endswith(f"/{row}") and cfg["trainer"]["logger"]["init_args"]["name"] == row


def test_baseline_row_trains_through_the_cli(tmp_path, repo_root):
    """The baseline YAML (plain layers, one VFM layer, fusion at block 0) runs the stage-1 objective (VF loss
    with its adaptive weight, GAN, equivariance) for two steps at debug size."""
    from test_tokenizer_training import _cli, _tiny_override

    override = _tiny_override(tmp_path, tmp_path / "data")
    tiny = yaml.safe_load(override.read_text())
    tiny["model"]["init_args"]["tokenizer_overrides"] = ablation_overrides("baseline", BASE)
    override.write_text(yaml.safe_dump(tiny))
    cli = _cli(repo_root / "configs/ablation/baseline.yaml", override, "--model.init_args.equivariance=debug")
    model, trainer = cli.model, cli.trainer
    assert not any(isinstance(m, ModulatedConvNeXtLayer) for m in model.tokenizer.modules())
    before = {k: v.detach().clone() for k, v in model.tokenizer.decoder.named_parameters()}
    trainer.fit(model, datamodule=cli.datamodule)
    assert trainer.global_step == 2
    moved = [k for k, v in model.tokenizer.decoder.named_parameters() if not torch.equal(v, before[k])]
    assert moved and any(".layers." in k for k in moved)
