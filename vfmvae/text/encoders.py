"""Building a text encoder and its tokenizer from config fields (docs/text_to_image.md, "Text encoders").

``kind``: ``"causal_lm"`` (BLIP3-o style query tokens through a frozen causal LM) or ``"siglip_text"``
(SigLIP2's frozen text tower). ``path``: a local ``save_pretrained`` folder holding the model and its
tokenizer; ``None`` builds the random ``preset`` (``debug``: tiny, with the offline debug tokenizer) and
is refused for other presets unless ``allow_random`` (paper-scale shapes on the `meta` device).
"""

from __future__ import annotations

from torch import nn

from vfmvae.text.causal_lm import QueryTokenEncoder, build_causal_lm
from vfmvae.text.siglip_text import SiglipTextEncoder, build_siglip_text
from vfmvae.text.tokens import debug_tokenizer, load_text_tokenizer

__all__ = ["TEXT_ENCODERS", "build_text_encoder"]

TEXT_ENCODERS = ("causal_lm", "siglip_text")


def _special_id(tokenizer, *names: str) -> int:
    for name in names:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is not None:
            return int(value)
    raise ValueError(f"the tokenizer has none of the special tokens {names}; add one to its folder")


def build_text_encoder(
    kind: str,
    path: str | None = None,
    preset: str = "debug",
    *,
    num_queries: int = 64,
    kv_cache: bool = True,
    dtype: str = "float32",
    allow_random: bool = False,
) -> tuple[nn.Module, object]:
    """``(encoder, tokenizer)``; the encoder maps ids ``(B, L)`` to features ``(B, L_t, feature_dim)``."""
    if kind not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {kind!r}; choose one of {TEXT_ENCODERS}")
    if path is None and preset != "debug" and not allow_random:
        raise ValueError(
            f"text encoder preset {preset!r} needs its weights: set text_encoder_path to a local folder "
            "(random weights are only built for the 'debug' preset)"
        )
    tokenizer = load_text_tokenizer(path) if path is not None else debug_tokenizer()
    if kind == "causal_lm":
        lm = build_causal_lm(path, preset, dtype)
        start = _special_id(tokenizer, "bos", "eos", "pad")
        encoder = QueryTokenEncoder(lm, num_queries, start, kv_cache=kv_cache)
    else:
        encoder = SiglipTextEncoder(build_siglip_text(path, preset, dtype), _special_id(tokenizer, "pad", "eos"))
    # Where the frozen weights came from, recorded beside their hash (`vfmvae.text.weights_record`).
    encoder.source = {"kind": kind, "path": path, "preset": None if path is not None else preset, "dtype": dtype}
    return encoder, tokenizer
