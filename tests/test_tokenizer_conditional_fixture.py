"""The text-conditional tokenizer vs the official Generator (`tests/fixtures/official/vfmvae_cond_text_tiny.*`).

fp32, atol 1e-5. The fixture is the official `Generator(conditional=True, label_type="text",
use_cross_attn=True)` on a tiny SigLIP vision + text model, with a tiny WordLevel tokenizer whose JSON
is stored in the fixture; its `notes` name the wrapper behaviour the numbers depend on (the pooled text
embedding is the head of the last position, w = cat(MLP(z), normalize(pooled)), cross-attention with
pad tokens and the null key/value masked out).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import close, official_fixture
from safetensors.torch import load_file

from vfmvae.tokenizer import VFMVAE, config_from_official, from_official
from vfmvae.tokenizer.convert import resolve_vfm_family
from vfmvae.vfm.siglip2_text import TextCondition, load_text_tokenizer, tokenize

ATOL = 1e-5
NAME = "vfmvae_cond_text_tiny"


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    T, meta, sd = official_fixture(NAME)
    model = from_official(sd, meta["generator_kwargs"], meta["vfm_config"], vfm_dtype="float32")
    return T, meta, model


def write_fixture_tokenizer(meta, folder):
    """The fixture's WordLevel tokenizer as a local Hugging Face tokenizer folder (as a SigLIP2 folder holds one)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(meta["tokenizer_json"])),
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
    )
    tok.save_pretrained(str(folder))
    return folder


def test_family_and_config_translation(fixture):
    _, meta, model = fixture
    g, d, cfg = meta["generator_kwargs"], meta["derived"], model.cfg
    assert resolve_vfm_family(g, meta["vfm_config"]) == "siglip2_text" == meta["vfm_family"]
    assert (cfg.label_type, cfg.cross_attention, cfg.text_dim) == ("text", True, d["c_dim"])
    assert cfg.style_dim == d["w_dim"] and cfg.w_dim == g["z_dim_for_mapping_mlp_output"]
    assert (cfg.num_ws, cfg.block_channels) == (d["num_ws"], d["block_channels"])
    assert [len(b.cross_attention) for b in model.decoder.synthesis.blocks] == [1, 1, 1, 0, 0, 0]
    assert config_from_official(g, meta["vfm_config"]).text_encoder == "debug-siglip-text"
    assert config_from_official(g, meta["vfm_config"], vfm_family="siglip2_text") == cfg
    with pytest.raises(ValueError, match="needs the SigLIP2 text tower"):
        config_from_official(g, vfm_family="dinov2")


def test_tokenizer_gives_the_official_ids(fixture, tmp_path):
    T, meta, _ = fixture
    tok = load_text_tokenizer(write_fixture_tokenizer(meta, tmp_path / "tok"))
    ids, mask = tokenize(tok, meta["prompts"])
    assert torch.equal(ids, T["inputs.text_input_ids"]) and torch.equal(mask, T["inputs.text_attention_mask"])


def test_text_condition(fixture):
    T, _, model = fixture
    text = model.encode_text(T["inputs.text_input_ids"], T["inputs.text_attention_mask"])
    assert isinstance(text, TextCondition) and text.mask.dtype == torch.bool
    close(text.tokens, T["intermediates.text_tokens"], "text_tokens")
    close(text.pooled, T["intermediates.text_pooled"], "text_pooled (head of the last position)")
    assert torch.equal(text.mask, T["inputs.text_attention_mask"].bool())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def test_encoder_side(fixture):
    T, _, model = fixture
    with torch.no_grad():
        feats = model.vfm_features(T["inputs.img"])
        posterior = model.encode(T["inputs.img"])
    for i, f in enumerate(feats):
        close(f, T[f"intermediates.vfm_feature_{i}"], f"vfm_feature_{i}")
    close(posterior.mean, T["outputs.mean"], "mean")
    close(posterior.logvar, T["outputs.logvar"], "logvar (unclamped)")
    close(posterior.sample(T["inputs.eps"]), T["outputs.z"], "z")


def test_conditioned_image(fixture):
    T, _, model = fixture
    with torch.no_grad():
        text = model.encode_text(T["inputs.text_input_ids"], T["inputs.text_attention_mask"])
        out = model(T["inputs.img"], eps=T["inputs.eps"], text=text)
        dec = model.decoder(out.z, text=text)
        decoded = model.decode(out.z, text)
    close(dec.z_lifted, T["intermediates.post_quant_out"], "post_quant_out")
    close(dec.ws, T["intermediates.ws"], "ws = cat(MLP(z_pooled), normalize(text_pooled))")
    close(out.image, T["outputs.img"], "image")
    for side in (32, 16, 8, 4, 2):
        close(out.multiscale[side], T[f"outputs.multiscale_{side}"], f"multiscale_{side}")
    assert list(out.multiscale) == [32, 16, 8, 4, 2]
    assert torch.equal(decoded, out.image)


def test_pad_tokens_are_masked_and_the_text_matters(fixture):
    """Cross-attention reads only the unmasked tokens; a different prompt changes the image."""
    T, _, model = fixture
    with torch.no_grad():
        text = model.encode_text(T["inputs.text_input_ids"], T["inputs.text_attention_mask"])
        z = T["outputs.z"]
        image = model.decode(z, text)
        noisy = text.tokens + 10.0 * torch.randn_like(text.tokens) * (~text.mask).unsqueeze(-1)
        assert torch.equal(model.decode(z, TextCondition(noisy, text.pooled, text.mask)), image)
        real = text.tokens + 0.5 * torch.randn_like(text.tokens) * text.mask.unsqueeze(-1)
        assert (model.decode(z, TextCondition(real, text.pooled, text.mask)) - image).abs().max() > 1e-4
        swapped = model.decode(z, TextCondition(text.tokens.flip(0), text.pooled.flip(0), text.mask.flip(0)))
        assert (swapped - image).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_conditions_are_required_and_checked(fixture):
    T, _, model = fixture
    z = T["outputs.z"]
    with pytest.raises(ValueError, match="needs text=model.encode_text"):
        model.decode(z)
    with pytest.raises(ValueError, match="not class_labels"):
        model.decode(z, class_labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="tokenise strings"):
        model.decode(z, ["a photo of a dog", "a cat"])
    with pytest.raises(TypeError, match="return_multiscale by keyword"):
        model.decode(z, True)


def test_save_pretrained_round_trip(fixture, tmp_path):
    T, _, model = fixture
    record = model.save_pretrained(tmp_path / "export")
    assert record["text_encoder"]["included"] and (tmp_path / "export" / "text_encoder.safetensors").is_file()
    assert not any(k.startswith("text_encoder.") for k in load_file(tmp_path / "export" / "model.safetensors"))
    loaded = VFMVAE.from_pretrained(tmp_path / "export")
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        text = loaded.encode_text(T["inputs.text_input_ids"], T["inputs.text_attention_mask"])
        close(text.pooled, T["intermediates.text_pooled"], "reloaded text_pooled")
        assert torch.equal(loaded.decode(T["outputs.z"], text), model.decode(T["outputs.z"], text))
    decoder_only = VFMVAE.from_pretrained(tmp_path / "export", decoder_only=True)
    assert decoder_only.text_encoder is None
    with torch.no_grad():
        assert torch.equal(decoder_only.decode(T["outputs.z"], text), loaded.decode(T["outputs.z"], text))
    with pytest.raises(RuntimeError, match="decoder-only"):
        decoder_only.encode_text(T["inputs.text_input_ids"], T["inputs.text_attention_mask"])
