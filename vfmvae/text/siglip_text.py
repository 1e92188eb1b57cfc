"""The light text condition: SigLIP2's own text tower (docs/text_to_image.md, "Text encoders").

A thin frozen adapter over a transformers `SiglipTextModel`: prompts are padded with the tower's pad
token to its fixed length (SigLIP's text model is trained on max-length padding, without an attention
mask) and the last hidden states ``(B, L, D)`` are the text features. The null prompt (a row of
:data:`vfmvae.text.tokens.PAD`) maps to zero features, the same null the latent cache uses for stored
features, so a network trained on cached features samples from prompts unchanged. Nothing here is
trained, so the features can be computed once and stored beside the latents (``trainable_outputs``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vfmvae.text.frozen import FrozenTextModule, check_local_folder, seeded_random
from vfmvae.text.tokens import PAD

__all__ = ["SIGLIP_TEXT_PRESETS", "SiglipTextEncoder", "build_siglip_text"]

SIGLIP_TEXT_PRESETS = {
    "debug": dict(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    ),
    # SigLIP2-L/16 text tower shapes (meta-device counts only; real runs load the weights).
    "siglip2-large": dict(
        vocab_size=256000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        max_position_embeddings=64,
    ),
}


def build_siglip_text(path: str | None, preset: str = "debug", dtype: str = "float32", seed: int = 0) -> nn.Module:
    """`SiglipTextModel` from a local folder (a text-only or full SigLIP2 checkpoint), else a random preset."""
    from transformers import SiglipTextConfig, SiglipTextModel

    torch_dtype = getattr(torch, dtype)
    if path is not None:
        return SiglipTextModel.from_pretrained(
            check_local_folder(path, "SigLIP2 text tower"), local_files_only=True, dtype=torch_dtype
        )
    if preset not in SIGLIP_TEXT_PRESETS:
        raise ValueError(f"unknown SigLIP text preset {preset!r}; choose one of {sorted(SIGLIP_TEXT_PRESETS)}")
    cfg = SiglipTextConfig(**SIGLIP_TEXT_PRESETS[preset], attn_implementation="sdpa")
    return seeded_random(lambda: SiglipTextModel(cfg), seed).to(torch_dtype)


class SiglipTextEncoder(FrozenTextModule):
    """``ids (B, L)`` int64 (``L`` <= the tower's length, :data:`PAD`-padded) -> features ``(B, L_max, D)``."""

    trainable_outputs = False

    def __init__(self, tower: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.frozen = tower
        self._freeze()
        self.pad_id = int(pad_id)
        self.length = int(tower.config.max_position_embeddings)
        self.width = int(tower.config.hidden_size)

    @property
    def feature_dim(self) -> int:
        return self.width

    @torch.no_grad()
    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2 or ids.dtype != torch.long or ids.shape[1] > self.length:
            raise ValueError(
                f"expected prompt token ids (B, <= {self.length}) int64, got {ids.dtype} {tuple(ids.shape)} "
                f"(text_max_length must be <= the tower's {self.length} positions)"
            )
        padded = torch.full((ids.shape[0], self.length), self.pad_id, dtype=ids.dtype, device=ids.device)
        padded[:, : ids.shape[1]] = ids.masked_fill(ids == PAD, self.pad_id)
        feats = self.frozen(input_ids=padded).last_hidden_state.float()
        null = (ids == PAD).all(dim=1)
        return feats.masked_fill(null[:, None, None], 0.0)
