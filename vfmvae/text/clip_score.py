"""CLIP score of generated images against their prompts, through torchmetrics with a local CLIP folder
(docs/text_to_image.md, "Evaluation").

torchmetrics' `CLIPScore` computes ``100 * max(cos(E_img, E_txt), 0)`` averaged over the pairs. It loads
weights by hub name unless given a loader; :func:`clip_score_metric` hands it a local ``save_pretrained``
folder (``CLIPModel`` + ``CLIPProcessor``, never a download). transformers 5 returns model outputs from
``get_image_features`` / ``get_text_features`` where torchmetrics expects the embedding tensors, so the
model is wrapped to return the projected embeddings (``pooler_output``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["clip_score_metric", "clip_score"]


class _EmbeddingCLIP(nn.Module):
    """A `CLIPModel` whose feature methods return the projected embeddings ``(B, D)`` as tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def _tensor(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


def clip_score_metric(path: str | os.PathLike):
    """torchmetrics `CLIPScore` over the CLIP model and processor saved in the local folder ``path``."""
    from torchmetrics.multimodal import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    if not os.path.isdir(path):
        raise FileNotFoundError(f"CLIP folder {path} does not exist (a local save_pretrained CLIP model + processor)")

    def load():
        model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
        return _EmbeddingCLIP(model), CLIPProcessor.from_pretrained(str(path), local_files_only=True)

    return CLIPScore(model_name_or_path=load)


@torch.no_grad()
def clip_score(path: str | os.PathLike, images: Tensor, prompts: Sequence[str], batch_size: int = 64) -> float:
    """Mean CLIP score of uint8 images ``(N, 3, H, W)`` against their ``N`` prompts."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    metric = clip_score_metric(path)
    for i in range(0, len(images), batch_size):
        metric.update(images[i : i + batch_size], list(prompts[i : i + batch_size]))
    return float(metric.compute())
