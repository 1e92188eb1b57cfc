"""VFMVAE model-level behaviour: paper parameter counts (meta device), dynamic resolution,
frozen VFM, typed outputs, presets and input validation."""

from __future__ import annotations

import pytest
import torch

from vfmvae.tokenizer import PRESETS, VFMVAE, Decoder, VFMVAEConfig, get_config

# Measured on the official Generator (docs/design.md, "Tokenizer architecture").
PAPER_COUNTS = {"head": 11_592_960, "lift": 1_907_328, "mapping": 525_312, "synthesis": 125_712_312}


@pytest.fixture(scope="module")
def paper_meta():
    with torch.device("meta"):
        return VFMVAE("vfmvae-f16d32-siglip2")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = VFMVAE("debug", vfm_config={"compute_dtype": "float32"})
    # Perturb zero-initialised paths (layer scale, attention out, noise strength) so they matter.
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_paper_parameter_counts(paper_meta):
    counts = paper_meta.parameter_counts()
    for part, expected in PAPER_COUNTS.items():
        assert counts[part] == expected, part
    assert counts["decoder"] == 128_144_952
    # SigLIP2-L/16-512 vision tower without its unused MAP head: 316,742,656 - 12,595,200.
    assert counts["vfm"] == 304_147_456
    assert paper_meta.cfg.num_ws == 44
    assert paper_meta.decoder.synthesis.num_ws == 44


def test_paper_per_block_counts(paper_meta):
    syn = paper_meta.decoder.synthesis
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert [n(a) for a in syn.fusion.values()] == [4_532_224, 609_280, 87_040, 284_416]
    assert [n(b) for b in syn.blocks] == [28_462_090, 30_043_402, 29_865_866, 23_565_194, 6_120_200, 2_142_600]
    assert [len(b.layers) for b in syn.blocks] == [7, 7, 7, 7, 5, 5]
    assert [len(b.attention) for b in syn.blocks] == [2, 2, 2, 0, 0, 0]
    one_layer = syn.blocks[0].layers[0]
    assert n(one_layer) == 2_902_529 and n(syn.blocks[0].attention[0]) == 3_150_336


def test_paper_counts_without_legacy_noise_and_with_vf_projection():
    with torch.device("meta"):
        model = VFMVAE(
            get_config("vfmvae-f16d32-siglip2", legacy=False, use_vf_projection=True), vfm=torch.nn.Identity()
        )
    counts = model.parameter_counts()
    assert counts["synthesis"] == 125_712_312 - 38  # one noise_strength scalar per ConvNeXt layer
    assert counts["vf_projection"] == 32_768 and counts["head"] == PAPER_COUNTS["head"]
    assert not any("noise_const" in k for k in model.state_dict())


def test_paper_shapes_on_meta(paper_meta):
    z = torch.empty(2, 32, 16, 16, device="meta")
    out = paper_meta.decode(z, return_multiscale=True)
    assert out.image.shape == (2, 3, 256, 256)
    assert list(out.multiscale) == [128, 64, 32, 16, 8]
    assert out.ws.shape == (2, 44, 512) and out.z_lifted.shape == (2, 512, 16, 16)


def test_decoder_only_build_has_no_vfm():
    with torch.device("meta"):
        model = VFMVAE.decoder_only("vfmvae-f16d32-siglip2")
        dec = Decoder(get_config("vfmvae-f16d32-siglip2"))
    assert model.vfm is None and model.head is None and not model.has_encoder
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in dec.parameters()) == 128_144_952


def test_dynamic_resolution_192px(tiny):
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        out = tiny(x)
    assert out.posterior.mean.shape == (1, 8, 12, 12)
    assert out.z.shape == (1, 8, 12, 12)
    assert out.image.shape == (1, 3, 192, 192)
    assert list(out.multiscale) == [96, 48, 24, 12, 6]
    assert [f.shape for f in out.vfm_features] == [(1, 576, 64)] * 3  # (2*192/16)^2 tokens


def test_forward_output_is_typed_and_consistent(tiny):
    x = torch.rand(2, 3, 64, 64)
    eps = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        out = tiny(x, eps=eps)
        post = tiny.encode(x)
        img = tiny.decode(out.z)
        mode_out = tiny(x, sample=False)
    torch.testing.assert_close(out.z, post.mean + post.std * eps)
    torch.testing.assert_close(out.image, img)
    torch.testing.assert_close(mode_out.z, post.mean)
    assert out.image.dtype == torch.float32 and out.posterior.kl().shape == (2,)


def test_uint8_input_equals_float_input(tiny):
    x8 = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a = tiny.encode(x8).mean
        b = tiny.encode(x8.float() / 255).mean
    torch.testing.assert_close(a, b)


def test_vfm_is_frozen_and_gets_no_gradient(tiny):
    model = VFMVAE("debug", vfm_config={"compute_dtype": "float32"})
    model.load_state_dict(tiny.state_dict())
    model.requires_grad_(True).train()  # neither may unfreeze the VFM
    assert not model.vfm.training and model.decoder.training
    before = {k: v.clone() for k, v in model.vfm.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    out = model(torch.rand(2, 3, 64, 64))
    (out.image.square().mean() + out.posterior.kl().mean()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.vfm.parameters())
    assert model.head.final_projection.blocks[0].mlp.w2.weight.grad is not None
    opt.step()
    after = model.vfm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.encode(torch.rand(1, 3, 64, 64) * 2 - 1.5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny.encode(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny.encode(torch.rand(1, 3, 80, 80))
    with pytest.raises(ValueError, match="z must be"):
        tiny.decode(torch.randn(1, 7, 4, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny.decode(torch.randn(1, 8, 6, 6))


def test_presets_and_config_validation():
    families = {
        f"vfmvae-f16d32-{f}" for f in ("siglip2-large", "dinov2-large", "eva02-large", "mae-large", "qwen2.5-vl")
    }
    conditional = {
        f"{base}-{mode}" for base in ("vfmvae-f16d32-siglip2", "debug") for mode in ("text", "cls2text", "cls2id")
    }
    # families: tests/test_vfm_presets.py; conditional: tests/test_tokenizer_conditional.py
    assert set(PRESETS) == {"vfmvae-f16d32-siglip2", "debug"} | families | conditional
    paper = get_config("vfmvae-f16d32-siglip2")
    assert paper.block_channels == [512, 512, 512, 512, 256, 128]
    assert paper.block_resolutions == [8, 16, 32, 64, 128, 256]
    assert (paper.z_resolution, paper.z_dim, paper.lifted_dim, paper.space_to_depth) == (16, 32, 512, 2)
    assert paper.legacy and paper.vfm_layers == (0, 12, -1)
    assert VFMVAEConfig.from_dict(paper.to_dict()) == paper
    with pytest.raises(KeyError, match="unknown tokenizer preset"):
        get_config("nope")
    with pytest.raises(ValueError, match="unknown fields"):
        VFMVAEConfig.from_dict({"z_dimm": 3})
    with pytest.raises(ValueError, match="fusion_block_indices must contain 0"):
        get_config("debug", fusion_block_indices=(1, 2))
    with pytest.raises(ValueError, match="divide vfm_hidden_size"):
        get_config("debug", level_dims=(7, 8, 8))


def test_legacy_noise_resizes_with_the_feature_map():
    """The static noise map is bilinearly resized, so other sizes still decode (and legacy=False has none)."""
    cfg = get_config("debug", legacy=False)
    dec = Decoder(cfg).eval()
    with torch.no_grad():
        assert dec(torch.randn(1, 8, 8, 8)).image.shape == (1, 3, 128, 128)
    assert not any("noise" in k for k in dec.state_dict())


def test_trainable_modules_per_stage():
    with torch.device("meta"):
        model = VFMVAE(get_config("vfmvae-f16d32-siglip2", use_vf_projection=True), vfm=torch.nn.Identity())

    def count(mode):
        return sum(p.numel() for m in model.trainable_modules(mode).values() for p in m.parameters())

    assert count("train_all") == 139_770_680  # stages 0-1 (measured on the official Generator)
    assert count("train_decoder") == 128_144_952
    # the intended stage-3 set (docs/design.md, "Tokenizer stages and losses")
    assert count("train_second_half_decoder") == 31_827_994
    with pytest.raises(ValueError, match="unknown train mode"):
        model.trainable_modules("freeze32")


def test_reset_buffers_after_meta_build():
    with torch.device("meta"):
        model = VFMVAE.decoder_only("debug")
    model.to_empty(device="cpu")
    model.reset_buffers()
    ref = Decoder(get_config("debug"))
    for (name, a), (_, b) in zip(model.decoder.named_buffers(), ref.named_buffers()):
        if "blur_kernel" in name:
            torch.testing.assert_close(a, b)


def test_paper_preset_dynamic_resolution_on_meta(paper_meta):
    """Full paper model (SigLIP2-L on meta): 192 px -> 12x12x32 latent -> 192 px."""
    side, latent = 192, 12
    with torch.device("meta"):
        out = paper_meta(torch.empty(1, 3, side, side))
    tokens = (2 * side // 16) ** 2
    assert [tuple(f.shape) for f in out.vfm_features] == [(1, tokens, 1024)] * 3
    assert out.posterior.mean.shape == (1, 32, latent, latent) and out.z.shape == (1, 32, latent, latent)
    assert out.image.shape == (1, 3, side, side)
    assert list(out.multiscale) == [side // 2, side // 4, side // 8, side // 16, side // 32]


def test_export_delegates_round_trip(tmp_path):
    """`VFMVAE.save_pretrained` / `VFMVAE.from_pretrained` reach the export module (decoder-only path)."""
    torch.manual_seed(1)
    model = VFMVAE.decoder_only("debug").eval()
    model.save_pretrained(tmp_path / "tok")
    loaded = VFMVAE.from_pretrained(tmp_path / "tok", decoder_only=True)
    z = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), model.decode(z), atol=0, rtol=0)


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(2)
    dec = Decoder(get_config("debug"))
    z = torch.randn(2, 8, 4, 4)
    grads = []
    for flag in (False, True):
        dec.zero_grad()
        dec.synthesis.activation_checkpointing = flag
        out = dec(z)
        (out.image.square().mean() + sum(m.mean() for m in out.multiscale.values())).backward()
        grads.append(torch.cat([p.grad.flatten() for p in dec.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
