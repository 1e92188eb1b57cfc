"""Conditional decoders by behaviour (docs/conditional.md): cls2id (no official fixture: the official code
cannot run it), cls2text, condition checks, and the paper-size conditional presets on the meta device.

cls2id: the official `MappingNetwork` sizes its MLP for the pooled latent plus *twice* the 1024-d class
embedding, so its first layer cannot take its own input. We build the evident intent (latent and class
embedding once); an official-layout checkpoint of that intent is made from the `vfmvae_tiny` fixture and the
mapping output is compared with the formula written out here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import official_fixture

from vfmvae.tokenizer import VFMVAE, from_official, get_config
from vfmvae.vfm.siglip2_text import TEXT_PRESETS, tokenize, write_word_level_tokenizer

NUM_CLASSES, EMBED = 10, 1024


def _cls2id_official(fixtures_dir, width: int):
    """The `vfmvae_tiny` Generator as an official cls2id checkpoint whose mapping MLP is `width` wide."""
    T, meta, sd = official_fixture("vfmvae_tiny")
    g = dict(meta["generator_kwargs"], conditional=True, label_type="cls2id", label_dim=NUM_CLASSES)
    gen = torch.Generator().manual_seed(0)
    w_dim = g["z_dim_for_mapping_mlp_output"]
    sd.update(
        {
            "mapping.embed.weight": torch.randn(EMBED, NUM_CLASSES, generator=gen),
            "mapping.embed.bias": 0.1 * torch.randn(EMBED, generator=gen),
            "mapping.mlp.fc0.weight": 100 * torch.randn(width, width, generator=gen),  # stored / lr multiplier
            "mapping.mlp.fc0.bias": 10 * torch.randn(width, generator=gen),
            "mapping.mlp.fc1.weight": 100 * torch.randn(w_dim, width, generator=gen),
            "mapping.mlp.fc1.bias": 10 * torch.randn(w_dim, generator=gen),
        }
    )
    return sd, g, meta


def _n(x):
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


def test_cls2id_mapping_is_the_intended_official_formula(fixtures_dir):
    lifted = 8 * 16  # z_dimension x decompress_factor of vfmvae_tiny
    sd, g, _ = _cls2id_official(fixtures_dir, lifted + EMBED)
    model = from_official(sd, g, decoder_only=True)
    assert model.cfg.label_type == "cls2id" and model.cfg.num_classes == NUM_CLASSES
    assert model.decoder.mapping.fc0.weight.shape == (lifted + EMBED, lifted + EMBED)  # class embedding once
    z_pooled = torch.randn(3, lifted, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 9])
    ws = model.decoder.mapping(z_pooled, class_labels=labels)
    # The official FullyConnectedLayer: weight * lr_mul / sqrt(in), bias * lr_mul; lrelu(0.2) without gain.
    e = F.one_hot(labels, NUM_CLASSES).float() @ (sd["mapping.embed.weight"] / math.sqrt(NUM_CLASSES)).T
    e = e + sd["mapping.embed.bias"]
    x = torch.cat([_n(z_pooled), _n(e)], dim=1)
    gain = 0.01 / math.sqrt(lifted + EMBED)
    x = F.leaky_relu(x @ (sd["mapping.mlp.fc0.weight"] * gain).T + 0.01 * sd["mapping.mlp.fc0.bias"], 0.2)
    w = x @ (sd["mapping.mlp.fc1.weight"] * gain).T + 0.01 * sd["mapping.mlp.fc1.bias"]
    torch.testing.assert_close(ws[:, 0], w, atol=1e-5, rtol=1e-5)
    assert ws.shape == (3, model.cfg.num_ws, model.cfg.w_dim) and torch.equal(ws[:, 0], ws[:, -1])
    one_hot = F.one_hot(labels, NUM_CLASSES).float()
    torch.testing.assert_close(model.decoder.mapping(z_pooled, class_labels=one_hot), ws, atol=0, rtol=0)


def test_cls2id_with_the_official_double_width_is_refused(fixtures_dir):
    sd, g, _ = _cls2id_official(fixtures_dir, 8 * 16 + 2 * EMBED)
    with pytest.raises(ValueError, match="class embedding twice"):
        from_official(sd, g, decoder_only=True)


def test_cls2id_labels_change_the_image_and_round_trip(fixtures_dir, tmp_path):
    sd, g, meta = _cls2id_official(fixtures_dir, 8 * 16 + EMBED)
    model = from_official(sd, g, meta["siglip_vision_config"], vfm_dtype="float32")
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(img, eps=eps, class_labels=torch.tensor([1, 1])).image
        b = model(img, eps=eps, class_labels=torch.tensor([1, 7])).image
    assert torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs class_labels"):
        model.decode(eps)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        model.decode(eps, class_labels=torch.tensor([0, 10]))
    model.save_pretrained(tmp_path / "export")
    loaded = VFMVAE.from_pretrained(tmp_path / "export", decoder_only=True)
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded.decode(eps, class_labels=torch.tensor([1, 7])), model.decode(eps, None, [1, 7]))


def test_cls2text_decodes_class_names(tmp_path):
    torch.manual_seed(0)
    names = ["tench", "goldfish", "great white shark"]
    tok_dir = write_word_level_tokenizer(tmp_path / "tok", names)
    from vfmvae.vfm.siglip2_text import load_text_tokenizer

    tok = load_text_tokenizer(tok_dir)
    model = VFMVAE("debug-cls2text").eval()
    with torch.no_grad():
        for p in model.decoder.parameters():  # zero-initialised paths would hide the condition
            p.add_(0.05 * torch.randn_like(p))
        ids, mask = tokenize(tok, [names[0], names[2]])
        assert mask.sum(1).tolist() == [2, 4]  # the words + </s>, padded to 64
        text = model.encode_text(ids, mask)
        z = torch.randn(1, 8, 4, 4).expand(2, -1, -1, -1)
        image = model.decode(z, text)
    assert (image[0] - image[1]).abs().max() > 1e-4  # same latent, different class name
    assert model.text_encoder is not None and not any(p.requires_grad for p in model.text_encoder.parameters())


def test_condition_misuse_is_named():
    plain = VFMVAE("debug", decoder_only=True)
    z = torch.randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match="unconditional"):
        plain.decode(z, class_labels=torch.tensor([0]))
    with pytest.raises(RuntimeError, match="no text tower"):
        plain.encode_text(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))
    cls2id = VFMVAE("debug-cls2id", decoder_only=True)
    with pytest.raises(ValueError, match="not text"):
        cls2id.decode(z, (torch.zeros(1, 2, 32), torch.zeros(1, 32), torch.ones(1, 2)))
    with pytest.raises(ValueError, match="cross_attention needs text tokens"):
        get_config("debug-cls2id", cross_attention=True)
    with pytest.raises(ValueError, match="label_type must be"):
        get_config("debug", label_type="prompt")


def test_paper_size_conditional_presets_on_meta():
    with torch.device("meta"):
        text = VFMVAE("vfmvae-f16d32-siglip2-text", vfm=torch.nn.Identity())
        cls2id = VFMVAE("vfmvae-f16d32-siglip2-cls2id", decoder_only=True)
    # SigLIP2-L text tower, counted from its shape: embeddings, 24 pre-LN blocks, final LN, head.
    h, i, layers, vocab, pos = (
        TEXT_PRESETS["siglip2-large-patch16-512"]["hf"][k]
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")
    )
    block = 4 * (h * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h)
    assert text.parameter_counts()["text_encoder"] == vocab * h + pos * h + layers * block + 2 * h + h * h + h
    cfg = text.cfg
    assert cfg.style_dim == 512 + 1024 and cfg.cross_attention
    c = 512  # blocks 0-2 (8-32 px), two cross-attention blocks each
    cross = c + 1024 + c * c + 1024 * 2 * c + c * c + 2 * c + (c + c * 4 * c + 4 * c + 4 * c * c + c)
    syn = text.decoder.synthesis
    assert [len(b.cross_attention) for b in syn.blocks] == [2, 2, 2, 0, 0, 0]
    assert sum(p.numel() for p in syn.blocks[0].cross_attention.parameters()) == 2 * cross
    mapping = cls2id.decoder.mapping
    assert mapping.fc0.weight.shape == (512 + 1024, 512 + 1024) and mapping.embed.weight.shape == (1024, 1000)


def test_text_tower_loads_from_a_local_siglip_folder_and_exports_by_reference(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    from vfmvae.vfm.siglip2_text import build_text_tower

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    full = SiglipModel(SiglipConfig(text_config=TEXT_PRESETS["debug-siglip-text"]["hf"], vision_config=vision))
    full.save_pretrained(tmp_path / "siglip")  # a full text + vision folder, as the released SigLIP2 ones
    tower = build_text_tower("debug-siglip-text", pretrained=tmp_path / "siglip")
    ids = torch.randint(3, 35, (2, 64), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(64) < torch.tensor([[5], [9]])).long()
    ref = full.text_model(input_ids=ids, attention_mask=mask)
    got = tower(ids, mask)
    torch.testing.assert_close(got.tokens, ref.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(got.pooled, ref.pooler_output, atol=0, rtol=0)
    with pytest.raises(ValueError, match="vocabulary of 35"):
        tower(torch.full((1, 4), 40), torch.ones(1, 4))

    model = VFMVAE("debug-text", text_encoder=tower, text_pretrained=tmp_path / "siglip").eval()
    record = model.save_pretrained(tmp_path / "export")
    assert not record["text_encoder"]["included"] and not (tmp_path / "export" / "text_encoder.safetensors").exists()
    loaded = VFMVAE.from_pretrained(tmp_path / "export")
    assert torch.equal(loaded.encode_text(ids, mask).pooled, got.pooled)
    torch.manual_seed(5)
    SiglipModel(full.config).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="differ from the ones the tokenizer was trained with"):
        VFMVAE.from_pretrained(tmp_path / "export", text_pretrained=tmp_path / "other")
