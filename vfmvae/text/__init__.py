"""Text conditioning for text-to-image diffusion on VFM-VAE latents (docs/text_to_image.md).

* `tokens`: prompts as fixed-width token-id tensors (pad -1), the debug tokenizer, local tokenizers.
* `causal_lm`: BLIP3-o style learnable query tokens read out of a frozen causal LM (optional prompt
  key/value cache).
* `siglip_text`: the light option, SigLIP2's frozen text tower.
* `condition`: `TextCondition`, the `ConditionSpec` of the text networks.
* `encoders`: `build_text_encoder(kind, path, preset, ...)`, the one place that builds them.

Plain PyTorch + transformers; no Lightning.
"""

from vfmvae.text.condition import TextCondition
from vfmvae.text.encoders import TEXT_ENCODERS, build_text_encoder
from vfmvae.text.tokens import PAD, debug_tokenizer, load_text_tokenizer, tokenize_prompts

__all__ = [
    "PAD",
    "TEXT_ENCODERS",
    "TextCondition",
    "build_text_encoder",
    "debug_tokenizer",
    "load_text_tokenizer",
    "tokenize_prompts",
]
