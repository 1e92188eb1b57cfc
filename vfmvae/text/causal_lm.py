"""BLIP3-o style conditioning: learnable query tokens read out of a frozen causal language model
(paper: text-to-image with VFM-VAE in the BLIP3-o pipeline; docs/text_to_image.md, "Text encoders").

The frozen LM reads ``[start] + prompt`` followed by ``Q`` learnable query embeddings; the queries' last
hidden states ``(B, Q, H)`` are the text features (the diffusion network projects them). Only the queries
(and the network's projection) train; the LM is frozen.

Two equivalent ways to run it (``kv_cache``):

* ``False``: one forward over ``[prompt; queries]``; gradients reach the queries through the frozen LM.
* ``True``: the prompt runs first under ``no_grad`` and its key/values are cached; the queries then attend
  to that cache. Valid because the model is causal: prompt positions never attend to the queries, so
  their key/values do not depend on the queries. Saves the prompt's activations in the backward pass.

Prompts are left-aligned to the queries (left padding with an attention mask, positions counted over
real tokens), so every query sees exactly its own prompt, whatever the other prompts' lengths.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from vfmvae.text.frozen import FrozenTextModule, check_local_folder, seeded_random
from vfmvae.text.tokens import PAD, prompt_lengths

log = logging.getLogger(__name__)

__all__ = ["CAUSAL_LM_PRESETS", "QueryTokenEncoder", "build_causal_lm"]

# Shapes of random LMs (Qwen2 architecture): ``debug`` for tests and the demo; the larger ones only for
# `meta`-device parameter counts of paper-scale configs (real runs load the weights from a folder).
CAUSAL_LM_PRESETS = {
    "debug": dict(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
    "qwen2.5-3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
}


def build_causal_lm(path: str | None, preset: str = "debug", dtype: str = "float32", seed: int = 0) -> nn.Module:
    """The frozen LM's base model (no LM head): from a local ``save_pretrained`` folder, else a random
    ``preset`` built from a fixed seed. Hub access is never attempted (``local_files_only``)."""
    from transformers import AutoModel, Qwen2Config, Qwen2Model

    torch_dtype = getattr(torch, dtype)
    if path is not None:
        model = AutoModel.from_pretrained(
            check_local_folder(path, "causal LM"), local_files_only=True, dtype=torch_dtype
        )
        # Vision-language checkpoints (e.g. Qwen2.5-VL) nest the language model; the queries read that.
        return getattr(model, "language_model", model)
    if preset not in CAUSAL_LM_PRESETS:
        raise ValueError(f"unknown causal LM preset {preset!r}; choose one of {sorted(CAUSAL_LM_PRESETS)}")
    cfg = Qwen2Config(**CAUSAL_LM_PRESETS[preset], attn_implementation="sdpa")
    return seeded_random(lambda: Qwen2Model(cfg), seed).to(torch_dtype)


class QueryTokenEncoder(FrozenTextModule):
    """``ids (B, L)`` int64 (raw prompt tokens, :data:`PAD`-padded) -> query features ``(B, Q, H)``.

    Args:
        lm: the frozen base model (``get_input_embeddings``, ``inputs_embeds``/``position_ids`` forward).
        num_queries: ``Q`` learnable query tokens (BLIP3-o uses 64).
        start_id: token put before every prompt, so the null (empty) prompt is a one-token prefix.
        kv_cache: run the prompt once under ``no_grad`` and let the queries read its cached key/values.
    """

    trainable_outputs = True  # features depend on trained weights: never cache them in the latent cache

    def __init__(self, lm: nn.Module, num_queries: int, start_id: int, kv_cache: bool = True) -> None:
        super().__init__()
        self.frozen = lm
        self._freeze()
        width = lm.get_input_embeddings().embedding_dim
        self.width, self.num_queries, self.start_id, self.kv_cache = width, num_queries, int(start_id), kv_cache
        # Initialised at the scale of token embeddings (std 0.02, the usual LM init).
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self._memo: tuple | None = None

    @property
    def feature_dim(self) -> int:
        return self.width

    def _prefix(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Left-padded ``[start] + prompt`` ids, its attention mask and position ids, ``(B, 1 + L)`` each."""
        B, L = ids.shape
        n = prompt_lengths(ids)
        full = torch.cat([torch.full((B, 1), self.start_id, dtype=ids.dtype, device=ids.device), ids], dim=1)
        # Right padding -> left padding: row b rolls right by its pad count L - n_b.
        cols = torch.arange(L + 1, device=ids.device)
        full = full.gather(1, (cols[None] - (L - n)[:, None]) % (L + 1))
        mask = full != PAD
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return full.masked_fill(~mask, 0), mask.long(), positions

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(f"expected prompt token ids (B, L) int64, got {ids.dtype} {tuple(ids.shape)}")
        key = self._memo_key(ids)
        if key is not None and self._memo is not None and self._memo[0] == key[0] and torch.equal(self._memo[1], ids):
            return self._memo[2]  # sampling: the same prompts at every step
        out = self._encode(ids)
        self._memo = None if key is None else (key[0], ids.clone(), out)
        return out

    def _memo_key(self, ids: Tensor):
        """Memoise only without grad in eval mode, keyed by the queries' version (EMA swaps change it)."""
        if self.training or torch.is_grad_enabled():
            return None
        return ((self.queries._version, self.queries.data_ptr()),)

    def _encode(self, ids: Tensor) -> Tensor:
        B = ids.shape[0]
        prefix, mask, pos = self._prefix(ids)
        embed = self.frozen.get_input_embeddings()
        queries = self.queries.to(embed.weight.dtype)[None].expand(B, -1, -1)
        q_pos = pos[:, -1:] + 1 + torch.arange(self.num_queries, device=ids.device)[None]
        full_mask = torch.cat([mask, torch.ones(B, self.num_queries, dtype=mask.dtype, device=mask.device)], 1)
        if self.kv_cache:
            with torch.no_grad():
                cache = self.frozen(input_ids=prefix, attention_mask=mask, position_ids=pos, use_cache=True)
            out = self.frozen(
                inputs_embeds=queries,
                attention_mask=full_mask,
                position_ids=q_pos,
                cache=_cache_of(cache),
                use_cache=False,
            )
        else:
            with torch.no_grad():
                prompt = embed(prefix)
            out = self.frozen(
                inputs_embeds=torch.cat([prompt, queries], 1),
                attention_mask=full_mask,
                position_ids=torch.cat([pos, q_pos], 1),
                use_cache=False,
            )
        return out.last_hidden_state[:, -self.num_queries :].float()


def _cache_of(output):
    """The key/value cache of a forward output (transformers 5 names it ``cache``, earlier ones
    ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
