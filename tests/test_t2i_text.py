"""Text conditioning (vfmvae/text): BLIP3-o query tokens through a tiny frozen causal LM saved to disk, the
prompt key/value cache, SigLIP's text tower, prompt tokenisation."""

from __future__ import annotations

import torch
from conftest import save_tiny_causal_lm
from transformers import Qwen2Model, SiglipTextConfig, SiglipTextModel

from vfmvae.text import PAD, TextCondition, build_text_encoder, debug_tokenizer, tokenize_prompts


def test_tokenize_pads_truncates_and_empty_is_null():
    tok = debug_tokenizer()
    ids = tokenize_prompts(tok, ["a cat", "", "a photo of a cat on the moon"], 4)
    assert ids.shape == (3, 4) and ids.dtype == torch.long
    assert (ids[0, 2:] == PAD).all() and (ids[0, :2] >= 0).all()
    assert (ids[1] == PAD).all()  # the null prompt
    assert (ids[2] >= 0).all()  # truncated to 4 tokens
    assert ids[0, 0] == tok.convert_tokens_to_ids("a") and ids[0, 1] == tok.convert_tokens_to_ids("cat")


def test_query_tokens_through_frozen_lm_from_disk(tmp_path):
    folder = save_tiny_causal_lm(tmp_path / "lm")
    enc, tok = build_text_encoder("causal_lm", str(folder), num_queries=3, kv_cache=True)
    cond = TextCondition(tok, 8)
    ids = cond.encode(["a cat", "a grey brick wall on the moon", ""])
    feats = enc(ids)
    assert feats.shape == (3, 3, 32)
    # Independent reference: the HF model on [bos] + prompt + queries of ONE prompt, no padding at all.
    ref_lm = Qwen2Model.from_pretrained(folder).eval()
    for row in range(3):
        real = ids[row][ids[row] != PAD]
        prefix = torch.cat([torch.tensor([tok.bos_token_id]), real])
        emb = torch.cat([ref_lm.get_input_embeddings()(prefix), enc.queries.detach()])[None]
        ref = ref_lm(inputs_embeds=emb).last_hidden_state[0, -3:]
        torch.testing.assert_close(feats[row].detach(), ref, atol=2e-5, rtol=0)
    # The key/value cache of the prompt gives the same features as one forward over prompt + queries.
    enc.kv_cache = False
    torch.testing.assert_close(enc(ids), feats, atol=2e-5, rtol=0)
    # Prompts matter.
    assert (feats[0] - feats[1]).abs().max() > 1e-3


def test_gradient_reaches_only_the_trainable_parts(tmp_path):
    enc, tok = build_text_encoder("causal_lm", num_queries=4)
    ids = TextCondition(tok, 8).encode(["a cat", "a dog on the grass"])
    for kv in (True, False):
        enc.kv_cache = kv
        enc.zero_grad(set_to_none=True)
        enc(ids).pow(2).sum().backward()
        assert enc.queries.grad is not None and enc.queries.grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in enc.frozen.parameters())
    enc.train()
    assert not enc.frozen.training  # frozen stays in eval mode
    # Frozen weights are not in the state dict (rebuilt from path / seed) and loading forgives their absence.
    sd = enc.state_dict()
    assert list(sd) == ["queries"]
    again, _ = build_text_encoder("causal_lm", num_queries=4)
    assert not again.load_state_dict(sd, strict=True).missing_keys
    torch.testing.assert_close(again.frozen.embed_tokens.weight, enc.frozen.embed_tokens.weight)  # same seed


def test_siglip_text_tower_and_null_prompt(tmp_path):
    torch.manual_seed(1)
    cfg = SiglipTextConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=12,
        pad_token_id=0,
    )
    SiglipTextModel(cfg).save_pretrained(tmp_path / "sig")
    debug_tokenizer().save_pretrained(tmp_path / "sig")
    enc, tok = build_text_encoder("siglip_text", str(tmp_path / "sig"))
    assert not enc.trainable_outputs
    ids = TextCondition(tok, 6).encode(["a red flower", ""])
    feats = enc(ids)
    assert feats.shape == (2, 12, 32)
    ref_model = SiglipTextModel.from_pretrained(tmp_path / "sig").eval()
    padded = torch.full((1, 12), tok.pad_token_id)
    padded[0, :3] = ids[0, :3]
    torch.testing.assert_close(feats[0], ref_model(input_ids=padded).last_hidden_state[0], atol=1e-5, rtol=0)
    assert feats[1].abs().max() == 0  # the null prompt maps to zero features (the stored-feature null)
