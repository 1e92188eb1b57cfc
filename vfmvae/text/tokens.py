"""Prompts as token ids: the condition tensor of the text-to-image networks (docs/text_to_image.md,
"The condition").

A batch of prompts is one ``(B, L)`` int64 tensor of raw prompt tokens (no special tokens), right-padded
with :data:`PAD` (-1) to a fixed ``max_length`` ``L``. Fixed width and a pad value outside every
vocabulary are what let the samplers treat text like class ids: classifier-free guidance concatenates
``[ids; null]`` along the batch, and the null prompt is a row of pads (``torch.full_like(ids, PAD)``).
Each encoder adds its own special tokens (a causal LM a start token, SigLIP its pad token).

`debug_tokenizer` builds a tiny word-level tokenizer offline with `tokenizers` (tests, the demo); real
runs load the language model's own tokenizer from its local folder.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["PAD", "DEBUG_WORDS", "debug_tokenizer", "load_text_tokenizer", "tokenize_prompts", "prompt_lengths"]

PAD = -1  # the padding id of the condition tensor (no vocabulary uses negative ids)

# The debug vocabulary: the words of the demo captions (datamodules/captions_demo.py) and a few common ones.
DEBUG_WORDS = (
    "a an the of on in with and at by to from is are its two three some this that near under over "
    "photo photograph picture image close up view black white red green blue yellow orange brown grey gray "
    "pink purple dark light bright small large old young man woman person people face portrait astronaut "
    "cat dog coffee cup mug rocket rocks rock moon sky space suit flag hubble telescope galaxy text page "
    "book letters chelsea camera tripod grass field hand chess board horse sea coins coin money "
    "brick wall building city skyline street window lena girl hat feather flowers flower bird tree trees "
    "grace hopper uniform navy officer raccoon animal fur forest leaves immunohistochemistry cells tissue "
    "stained microscope slide retina eye blood vessels monochrome colour color logo scikit mountain lake "
    "water beach sand snow night day sunset clouds cloud round square pattern texture stars nebula "
    "temple launch pad table stones gravel galaxies"
).split()
_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def debug_tokenizer(extra_words: Sequence[str] = ()):
    """A tiny word-level `PreTrainedTokenizerFast` (lower-cased words and punctuation), built offline."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*DEBUG_WORDS, *(w.lower() for w in extra_words), *".,;:!?'-\"()"]))
    vocab = {tok: i for i, tok in enumerate([*_SPECIALS, *words])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def load_text_tokenizer(path: str | os.PathLike | None):
    """The tokenizer of a local model folder (``save_pretrained``), or the debug tokenizer for ``None``."""
    if path is None:
        return debug_tokenizer()
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not os.path.isdir(path):
        raise FileNotFoundError(f"text encoder folder {path} does not exist (text_encoder_path: a local folder)")
    config = os.path.join(path, "tokenizer_config.json")
    declared = json.load(open(config)).get("tokenizer_class") if os.path.isfile(config) else None
    if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        # A generic tokenizer.json: AutoTokenizer would pick the model type's class and re-tokenise it.
        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


_SPACES = re.compile(r"\s+")


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> Tensor:
    """``(B, max_length)`` int64 raw token ids, right-padded with :data:`PAD`; longer prompts are truncated
    (logged once per call). An empty prompt is a row of pads, i.e. the null prompt."""
    if isinstance(prompts, str):
        raise TypeError("tokenize_prompts takes a list of prompts, not one string")
    out = torch.full((len(prompts), max_length), PAD, dtype=torch.long)
    truncated = 0
    for i, prompt in enumerate(prompts):
        ids = tokenizer(_SPACES.sub(" ", str(prompt)).strip(), add_special_tokens=False)["input_ids"]
        truncated += len(ids) > max_length
        ids = ids[:max_length]
        if ids:
            out[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    if truncated:
        log.info("%d of %d prompts truncated to %d tokens", truncated, len(prompts), max_length)
    return out


def prompt_lengths(ids: Tensor) -> Tensor:
    """``(B,)`` number of real tokens of each row (pads are :data:`PAD`, at the end)."""
    return (ids != PAD).sum(dim=1)
