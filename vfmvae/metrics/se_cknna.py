"""SE-CKNNA: CKNNA between a model's pooled features and a VFM's, per SE condition (docs/design.md, "SE-CKNNA"; docs/design.md,
"SE-CKNNA").

Each extractor turns images into ONE pooled vector per image, copying the official per-model input pipeline and
pooling rule (`tools/evaluate_alignment/{vfms,vaes,diffusions}/*`):

| extractor            | clean / noise input                         | equivariance input                                | pooled feature |
|----------------------|---------------------------------------------|---------------------------------------------------|----------------|
| `DINOv2SEExtractor`  | PIL bicubic Resize(224) of the 256 px image | rot90, bilinear to int(224*scale) (no antialias), reflect-pad right/bottom to a multiple of the patch | mean of final-norm patch tokens, CLS excluded |
| `SigLIPSEExtractor`  | 256 px as is (pos-embed interpolated)       | rot90 at 256 px, bilinear x scale with antialias  | mean of post-LN `last_hidden_state` |
| `TokenizerSEExtractor` | 256 px in [0, 1] -> `encode` -> posterior sample | rot90, bilinear x scale with antialias, then `encode` (its own x2) | spatial mean of z |

The networks are plain callables, so the rules are testable with tiny stand-ins:
- `token_fn(images_01 (B, 3, H, W)) -> (B, N, D)` patch tokens (e.g. `lambda x: vfm(x, [-1])[0]` for a `FrozenVFM`);
- `encode_fn(images_01) -> posterior` with `.sample(generator=...)` / `.mean`, or a latent tensor `(B, C, h, w)`.

DiT blocks use `dit_block_features` (`vfmvae.metrics.se_probe`, re-exported here): clean latents,
x_t = (1 - s) x + s eps at noise fraction s = 0.5 on the linear path, the network's own time convention
(LightningDiT t = 1 data -> t = 1 - s; REG t = 1 noise -> t = s), the null condition, and the tokens the
network names (REG: blocks without the class token, projectors over all tokens, as the official extractor).
The chunked loop over images and conditions is `vfmvae.metrics.se_probe`, shared with the training probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vfmvae.codec import uint8_to_unit

from .cknna import cknna
from .numerics import full_fp32
from .se_probe import conditioned_features, dit_block_features
from .se_transforms import (
    NOISE_LEVELS,
    SE_RESOLUTION,
    SE_SEED,
    EquivarianceTransform,
    condition_names,
    load_image,
    rotate_quarter_turns,
)

__all__ = [
    "SEExtractor",
    "DINOv2SEExtractor",
    "SigLIPSEExtractor",
    "TokenizerSEExtractor",
    "extract_condition_features",
    "se_cknna",
    "AGGREGATE_NAME",
    "dit_block_features",
]

AGGREGATE_NAME = "mean_over_conditions"  # the explicitly named aggregate: plain mean of the per-condition values


class SEExtractor(Protocol):
    def clean(self, images: np.ndarray) -> torch.Tensor:
        """uint8 `(B, H, W, 3)` -> pooled `(B, D)` (also used for the noise conditions)."""

    def equivariance(self, image: np.ndarray, transform: EquivarianceTransform) -> torch.Tensor:
        """uint8 `(H, W, 3)` with its transform -> pooled `(D,)` (one image at a time, as officially)."""


def _to_01(images: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(2, 0, 1)
    return uint8_to_unit(x)


def _pil_resize_shorter(images: np.ndarray, size: int) -> np.ndarray:
    """torchvision `Resize(size, BICUBIC)` on PIL images: shorter side -> size, uint8 result."""
    from PIL import Image

    out = []
    for im in images:
        h, w = im.shape[:2]
        new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)  # (h, w)
        out.append(np.asarray(Image.fromarray(im).resize((new[1], new[0]), Image.BICUBIC), dtype=np.uint8))
    return np.stack(out)


def _downscale_antialias(x: torch.Tensor, scale: float) -> torch.Tensor:
    if scale >= 1.0:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=True)


@dataclass
class DINOv2SEExtractor:
    """DINOv2 (official timm `forward_features`): patch-token mean after the final norm, CLS excluded."""

    token_fn: Callable[[torch.Tensor], torch.Tensor]
    resolution: int = 224
    patch_size: int = 14
    device: str | torch.device = "cpu"

    @torch.no_grad()
    def clean(self, images: np.ndarray) -> torch.Tensor:
        x = _to_01(_pil_resize_shorter(images, self.resolution), self.device)
        return self.token_fn(x).float().mean(1)

    @torch.no_grad()
    def equivariance(self, image: np.ndarray, transform: EquivarianceTransform) -> torch.Tensor:
        x = rotate_quarter_turns(_to_01(image, self.device), transform.rotation)
        target = int(self.resolution * transform.scale)
        x = F.interpolate(x[None], size=target, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.patch_size, (-w) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return self.token_fn(x).float().mean(1)[0]


@dataclass
class SigLIPSEExtractor:
    """SigLIP2 at the input resolution (256 px): mean of the post-LayerNorm `last_hidden_state` tokens."""

    token_fn: Callable[[torch.Tensor], torch.Tensor]
    device: str | torch.device = "cpu"

    @torch.no_grad()
    def clean(self, images: np.ndarray) -> torch.Tensor:
        return self.token_fn(_to_01(images, self.device)).float().mean(1)

    @torch.no_grad()
    def equivariance(self, image: np.ndarray, transform: EquivarianceTransform) -> torch.Tensor:
        x = rotate_quarter_turns(_to_01(image, self.device), transform.rotation)[None]
        return self.token_fn(_downscale_antialias(x, transform.scale)).float().mean(1)[0]


@dataclass
class TokenizerSEExtractor:
    """VFM-VAE: spatial mean of the posterior *sample* z (official; `use_sample=False` takes the mean instead)."""

    encode_fn: Callable[[torch.Tensor], object]
    use_sample: bool = True
    device: str | torch.device = "cpu"
    seed: int = SE_SEED
    generator: torch.Generator | None = field(default=None, repr=False)

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encode_fn(x)
        if torch.is_tensor(out):
            z = out
        elif self.use_sample:
            if self.generator is None:
                self.generator = torch.Generator(device=x.device).manual_seed(self.seed)
            z = out.sample(generator=self.generator)
        else:
            z = out.mean
        if z.ndim != 4:
            raise ValueError(f"tokenizer latent must be (B, C, h, w), got {tuple(z.shape)}")
        return z.float().mean(dim=(-2, -1))

    @torch.no_grad()
    def clean(self, images: np.ndarray) -> torch.Tensor:
        return self._latent(_to_01(images, self.device))

    @torch.no_grad()
    def equivariance(self, image: np.ndarray, transform: EquivarianceTransform) -> torch.Tensor:
        x = rotate_quarter_turns(_to_01(image, self.device), transform.rotation)[None]
        return self._latent(_downscale_antialias(x, transform.scale))[0]


@full_fp32()
def extract_condition_features(
    extractor: SEExtractor,
    image_paths: Sequence[str | Path],
    conditions: Sequence[str] | None = None,
    *,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    resolution: int = SE_RESOLUTION,
    seed: int = SE_SEED,
    batch_size: int = 32,
    desc: str = "SE features",
) -> dict[str, torch.Tensor]:
    """Pooled features `{condition: (N, D) float32 CPU}` for images in the given (stem-sorted) order.

    Image `i` of `image_paths` gets transform index `i`; sort the paths by stem first to match the official files.
    Chunks of `batch_size` images, every condition per chunk (`vfmvae.metrics.se_probe.conditioned_features`).
    """
    names = condition_names(noise_levels)
    conditions = list(conditions) if conditions is not None else names
    unknown = [c for c in conditions if c not in names]
    if unknown:
        raise ValueError(f"unknown SE conditions {unknown}; known: {names}")
    if not image_paths:
        raise ValueError("no images given")
    return conditioned_features(
        lambda chunk: extractor,
        lambda idx: [load_image(image_paths[i], resolution) for i in idx],
        len(image_paths),
        conditions,
        batch_size=batch_size,
        noise_levels=noise_levels,
        seed=seed,
        desc=desc,
    )


def se_cknna(
    model_features: Mapping[str, torch.Tensor], reference_features: Mapping[str, torch.Tensor], topk: int = 10
) -> dict[str, float]:
    """`{condition: CKNNA(model[c], reference[c])}` plus `AGGREGATE_NAME` (mean over the conditions given).

    Both sides must be computed on the *same* transformed images, rows in the same order.
    """
    missing = [c for c in model_features if c not in reference_features]
    if missing:
        raise KeyError(f"reference features lack conditions {missing}")
    if not model_features:
        raise ValueError("no conditions given")
    scores = {c: cknna(model_features[c], reference_features[c], topk=topk) for c in model_features}
    scores[AGGREGATE_NAME] = float(np.mean(list(scores.values())))
    return scores
