"""Conditions of the conditional decoders (docs/conditional.md): class embedding, input checks, batches.

The official `Generator` (`conditional=True`) has three label types; the decoder reads

| label_type | condition | mapping network | synthesis |
|---|---|---|---|
| `text` | prompts through the SigLIP2 text tower | `w = cat(MLP(z), normalize(pooled text))` | cross-attention to the text tokens (pads masked) |
| `cls2text` | class names through the text tower | same | same |
| `cls2id` | class ids (official: one-hot) | `w = MLP(cat(n(z), n(embed(one_hot))))` | no cross-attention |

(`n` = `normalize_2nd_moment`). The official `cls2id` code counts the 1024-d class embedding twice in
the width of the mapping MLP's input, so its first layer cannot take its own input; we build the evident
intent, an MLP whose input is the pooled latent and the class embedding once (README, "Faithfulness and
deviations").

`BatchConditioner` turns a training batch into the decoder's condition: captions (`"caption"`) or class
names (`"class_name"`) are tokenised with the text tower's Hugging Face tokenizer and encoded by the
frozen tower; class ids come from `"label"`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from vfmvae.codec import as_unit
from vfmvae.vfm.siglip2_text import TextCondition, load_text_tokenizer, tokenize

from .config import VFMVAEConfig
from .layers import EqualizedLinear

BATCH_TEXT_KEYS = {"text": "caption", "cls2text": "class_name"}


class ClassEmbedding(EqualizedLinear):
    """Official `mapping.embed`: an equalised linear layer on the one-hot label. `(B,) int64 | (B, K) -> (B, E)`."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__(num_classes, embed_dim)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 1:
            if labels.is_floating_point():
                raise TypeError("class_labels: give int64 ids (B,) or one-hot / soft labels (B, num_classes)")
            if labels.numel() and labels.device.type == "cpu":  # on an accelerator one_hot asserts on the device
                lo, hi = (int(t) for t in torch.aminmax(labels))
                if lo < 0 or hi >= self.num_classes:
                    raise ValueError(f"class_labels must lie in [0, {self.num_classes}), got [{lo}, {hi}]")
            labels = F.one_hot(labels.long(), self.num_classes)
        elif labels.ndim != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(f"class_labels must be (B,) ids or (B, {self.num_classes}), got {tuple(labels.shape)}")
        return super().forward(labels.to(self.weight.dtype))


def as_text_condition(text: Any) -> TextCondition:
    """A `TextCondition` from `encode_text`'s output (or any (tokens, pooled, mask) triple)."""
    if isinstance(text, (bool, str, list)) or text is None:
        raise TypeError(
            "text must be the condition returned by model.encode_text(input_ids, attention_mask) "
            "(tokenise strings with vfmvae.vfm.siglip2_text.tokenize first)"
        )
    tokens, pooled, mask = text
    if tokens.ndim != 3 or pooled.ndim != 2 or mask.shape != tokens.shape[:2] or pooled.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"text condition shapes must be tokens (B, L, C), pooled (B, C), mask (B, L); got "
            f"{tuple(tokens.shape)}, {tuple(pooled.shape)}, {tuple(mask.shape)}"
        )
    return TextCondition(tokens, pooled, mask.bool())


def check_condition(
    cfg: VFMVAEConfig, batch: int, text: Any, class_labels: Any, device: torch.device | None = None
) -> tuple[TextCondition | None, torch.Tensor | None]:
    """`(text, class_labels)` for `cfg.label_type`, checked (one-line errors naming what to pass); class ids
    may be given as a list."""
    kind = cfg.label_type
    if kind is None:
        if text is not None or class_labels is not None:
            raise ValueError("this tokenizer is unconditional (label_type None): pass neither text nor class_labels")
        return None, None
    if cfg.uses_text:
        if class_labels is not None:
            raise ValueError(f"a {kind!r} decoder takes text=model.encode_text(...), not class_labels")
        if text is None:
            what = "prompts" if kind == "text" else "class names"
            raise ValueError(f"a {kind!r} decoder needs text=model.encode_text(...) of the {what}")
        cond = as_text_condition(text)
        if cond.tokens.shape[0] != batch or cond.tokens.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"text condition {tuple(cond.tokens.shape)} does not fit a batch of {batch} and text_dim {cfg.text_dim}"
            )
        return cond, None
    if text is not None:
        raise ValueError("a 'cls2id' decoder takes class_labels (int64 ids), not text")
    if class_labels is None:
        raise ValueError("a 'cls2id' decoder needs class_labels: int64 class ids (B,)")
    class_labels = torch.as_tensor(class_labels, device=device)
    if class_labels.ndim == 0 or class_labels.shape[0] != batch:
        raise ValueError(f"class_labels {tuple(class_labels.shape)} does not fit a batch of {batch}")
    return None, class_labels


def batch_images01(batch: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
    """Training images in [0, 1]: uint8 batches (the data modules) or float ones (tests)."""
    return as_unit(batch["image"] if isinstance(batch, Mapping) else batch, "tokenizer batches")


class BatchConditioner:
    """Batch -> decoder condition kwargs (`text=` or `class_labels=`) for a conditional tokenizer.

    `tokenizer`: the text tower's Hugging Face tokenizer (text modes), or the local folder it loads from
    (`vfmvae.vfm.siglip2_text.load_text_tokenizer`) at the first batch, so that a data module's
    `prepare_data` may write it (the CPU demo).
    """

    def __init__(self, cfg: VFMVAEConfig, tokenizer=None):
        if cfg.label_type is None:
            raise ValueError("BatchConditioner: the tokenizer is unconditional")
        if cfg.uses_text and tokenizer is None:
            raise ValueError(
                f"a {cfg.label_type!r} tokenizer needs the text tower's tokenizer: set model.text_tokenizer "
                "(a local Hugging Face tokenizer folder; default: the text tower / VFM folder)"
            )
        self.cfg, self.tokenizer = cfg, tokenizer

    def texts(self, batch: Mapping[str, Any]) -> list[str]:
        key = BATCH_TEXT_KEYS[self.cfg.label_type]
        if key not in batch:
            source = (
                "captions (data.init_args.condition: captions)"
                if key == "caption"
                else ("class names (data.init_args.condition: class_names with a class_names_path)")
            )
            raise KeyError(f"a {self.cfg.label_type!r} tokenizer trains on {source}; the batch has no {key!r}")
        return list(batch[key])

    def __call__(self, model, batch: Mapping[str, Any] | torch.Tensor, device: torch.device) -> dict[str, Any]:
        if not isinstance(batch, Mapping):
            raise TypeError("a conditional tokenizer trains on dict batches with its condition (caption / label)")
        if not self.cfg.uses_text:
            if "label" not in batch:
                raise KeyError("a 'cls2id' tokenizer trains on class ids: the batch has no 'label'")
            return {"class_labels": batch["label"].to(device)}
        if isinstance(self.tokenizer, (str, os.PathLike)):
            self.tokenizer = load_text_tokenizer(self.tokenizer)
        ids, mask = tokenize(self.tokenizer, self.texts(batch), self.cfg.text_max_length, device)
        return {"text": model.encode_text(ids, mask)}


__all__ = [
    "BATCH_TEXT_KEYS",
    "BatchConditioner",
    "TextCondition",
    "batch_images01",
    "ClassEmbedding",
    "as_text_condition",
    "check_condition",
]
