"""The text condition of the text-to-image networks: a `vfmvae.dit.interface.ConditionSpec` over prompts
(docs/text_to_image.md, "The condition").

A condition is either

* prompt token ids ``(B, L)`` int64, :data:`vfmvae.text.tokens.PAD`-padded (what samplers, grids and
  training on captions use); the null prompt is a row of pads; or
* stored text features ``(B, L_t, D_t)`` float (a frozen encoder's outputs from the latent cache, only
  for encoders without trained parts); the null is zeros.

``from_batch`` takes stored features when the batch has them (``batch["text_features"]``), else it
tokenizes the captions (``batch["caption"]``, a list of strings). ``draw`` picks prompts from a fixed
list (the sample grids' prompts): ``balanced`` cycles through it, ``random`` draws uniformly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vfmvae.text.tokens import PAD, tokenize_prompts

__all__ = ["TextCondition", "DEFAULT_GRID_PROMPTS"]

DEFAULT_GRID_PROMPTS = (
    "a photo of a cat",
    "an astronaut on the moon",
    "a red brick wall",
    "a cup of coffee",
)


class TextCondition:
    """Prompts -> ``(B, max_length)`` ids; see the module docstring."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        prompts: Sequence[str] = DEFAULT_GRID_PROMPTS,
        caption_key: str = "caption",
        feature_key: str = "text_features",
    ) -> None:
        if max_length < 1:
            raise ValueError(f"text_max_length must be >= 1, got {max_length}")
        if not prompts:
            raise ValueError("the text condition needs at least one grid prompt (sample_prompts)")
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.prompts = tuple(str(p) for p in prompts)
        self.caption_key, self.feature_key = caption_key, feature_key

    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
        """Prompts -> ids ``(B, max_length)`` on ``device``."""
        return tokenize_prompts(self.tokenizer, list(prompts), self.max_length).to(device)

    def from_batch(self, batch: Mapping[str, Any]) -> Tensor:
        device = batch["latent"].device if "latent" in batch else "cpu"
        if self.feature_key in batch:
            return batch[self.feature_key].to(device)
        if self.caption_key not in batch:
            raise KeyError(
                f"the batch has no {self.caption_key!r} (captions) or {self.feature_key!r} (stored text "
                f"features) entry; keys: {sorted(batch)}"
            )
        captions = batch[self.caption_key]
        if isinstance(captions, str):
            captions = [captions]
        return self.encode(captions, device)

    def null(self, n: int, device: torch.device | str) -> Tensor:
        return torch.full((n, self.max_length), PAD, dtype=torch.long, device=device)

    def null_like(self, condition: Tensor) -> Tensor:
        if condition.dtype == torch.long:
            return torch.full_like(condition, PAD)
        return torch.zeros_like(condition)

    def draw(self, mode: str, n: int, *, offset: int = 0, generator: torch.Generator | None = None) -> Tensor:
        if mode == "balanced":
            chosen = [self.prompts[(offset + i) % len(self.prompts)] for i in range(n)]
        elif mode == "random":
            idx = torch.randint(0, len(self.prompts), (n,), generator=generator).tolist()
            chosen = [self.prompts[i] for i in idx]
        else:
            raise ValueError(f"unknown prompt mode {mode!r}; choose 'random' or 'balanced'")
        return self.encode(chosen)
