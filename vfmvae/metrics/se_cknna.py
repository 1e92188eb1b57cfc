"""SE-CKNNA: CKNNA between a model's pooled features and a VFM's, per SE condition (spec diffusion.md §1.2, §1.4).

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

DiT blocks (§1.4) use `dit_block_features`: clean latents, x_t = (1 - s) x + s eps at noise fraction s = 0.5 on the
linear path, the model's own time convention (LightningDiT t = 1 data -> t = 1 - s; REG t = 1 noise -> t = s), the
null label, and a token mean that excludes REG's class token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .cknna import cknna
from .numerics import full_fp32
from .se_transforms import (
    NOISE_LEVELS,
    SE_RESOLUTION,
    SE_SEED,
    EquivarianceTransform,
    add_pixel_noise,
    condition_names,
    equivariance_params,
    load_image,
    noise_condition,
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
    "DiTProbe",
    "dit_block_features",
    "lightningdit_probe",
    "sit_reg_probe",
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
    return x.float() / 255.0


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
) -> dict[str, torch.Tensor]:
    """Pooled features `{condition: (N, D) float32 CPU}` for images in the given (stem-sorted) order.

    Image `i` of `image_paths` gets transform index `i`; sort the paths by stem first to match the official files.
    """
    names = condition_names(noise_levels)
    conditions = list(conditions) if conditions is not None else names
    unknown = [c for c in conditions if c not in names]
    if unknown:
        raise ValueError(f"unknown SE conditions {unknown}; known: {names}")
    if not image_paths:
        raise ValueError("no images given")
    sigma_of = {noise_condition(s): s for s in noise_levels}
    out: dict[str, torch.Tensor] = {}
    for cond in conditions:
        feats = []
        for start in range(0, len(image_paths), batch_size):
            idx = range(start, min(start + batch_size, len(image_paths)))
            images = [load_image(image_paths[i], resolution) for i in idx]
            if cond == "equivariance":
                feats += [
                    extractor.equivariance(im, equivariance_params(i, seed))[None].cpu() for i, im in zip(idx, images)
                ]
                continue
            if cond in sigma_of:
                images = [add_pixel_noise(im, sigma_of[cond], i, seed) for i, im in zip(idx, images)]
            feats.append(extractor.clean(np.stack(images)).cpu())
        out[cond] = torch.cat(feats).float()
    return out


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


# ----------------------------------------------------------------------------------------------- diffusion blocks


@dataclass
class DiTProbe:
    """A DiT wrapped for SE-CKNNA block features.

    `hidden_fn(x_t, t, y, cls_t)` returns `{feature name: (B, N, D)}` patch tokens only (class token already
    removed); `time_convention` is `"data_at_1"` (LightningDiT, SiT) or `"noise_at_1"` (REG, REPA).
    """

    hidden_fn: Callable[..., dict[str, torch.Tensor]]
    time_convention: str
    null_class: int = 1000
    needs_cls_token: bool = False

    def __post_init__(self) -> None:
        if self.time_convention not in ("data_at_1", "noise_at_1"):
            raise ValueError(f"time_convention must be 'data_at_1' or 'noise_at_1', got {self.time_convention!r}")

    def model_time(self, noise_fraction: float) -> float:
        return 1.0 - noise_fraction if self.time_convention == "data_at_1" else noise_fraction


@torch.no_grad()
@full_fp32()
def dit_block_features(
    probe: DiTProbe,
    latents: torch.Tensor,
    *,
    noise_fraction: float = 0.5,
    cls_tokens: torch.Tensor | None = None,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Token-mean features `{name: (N, D)}` of normalised latents `(N, C, h, w)` noised to `noise_fraction`.

    x_t = (1 - s) x + s eps (s = 0.5 in the paper), null label, time in the model's own convention; REG's DINOv2
    class token (`cls_tokens (N, Dc)`) is noised the same way.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (N, C, h, w), got {tuple(latents.shape)}")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
    if probe.needs_cls_token and (cls_tokens is None or len(cls_tokens) != len(latents)):
        raise ValueError("this DiT (REG) needs one DINOv2 class token per latent (cls_tokens (N, Dc))")
    s = noise_fraction
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(latents), batch_size):
        x = latents[start : start + batch_size].float()
        eps = torch.randn(x.shape, generator=generator, device=x.device)
        x_t = (1 - s) * x + s * eps
        cls_t = None
        if probe.needs_cls_token:
            c = cls_tokens[start : start + batch_size].float()
            cls_t = (1 - s) * c + s * torch.randn(c.shape, generator=generator, device=c.device)
        t = torch.full((len(x),), probe.model_time(s), device=x.device)
        y = torch.full((len(x),), probe.null_class, dtype=torch.long, device=x.device)
        for name, tokens in probe.hidden_fn(x_t, t, y, cls_t).items():
            out.setdefault(name, []).append(tokens.float().mean(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _velocity_tokens(v: torch.Tensor) -> torch.Tensor:
    # final_layer tokens for patch size 1 (the paper's DiTs): (B, C, H, W) -> (B, H*W, C)
    return v.flatten(2).transpose(1, 2)


def lightningdit_probe(model) -> DiTProbe:
    """`vfmvae.dit.LightningDiT` (t = 1 data): `embedder`, `block_i`, `final_layer`."""

    def hidden_fn(x, t, y, cls_t=None):
        depth = len(model.blocks)
        v, hidden = model(x, t, y, return_hidden=list(range(depth)))
        feats = {"embedder": model.embed_tokens(x)}
        feats.update({f"block_{i}": hidden[i] for i in range(depth)})
        feats["final_layer"] = _velocity_tokens(v)
        return feats

    return DiTProbe(hidden_fn, "data_at_1")


def sit_reg_probe(model) -> DiTProbe:
    """`vfmvae.dit.SiTREG` (t = 1 noise): class token excluded from every mean; adds `projector_0`."""

    def hidden_fn(x, t, y, cls_t):
        depth = len(model.blocks)
        out, hidden = model(x, t, y, cls_t, return_hidden=list(range(depth)))
        feats = {"embedder": model.embed_tokens(x, cls_t)[:, 1:]}
        feats.update({f"block_{i}": hidden[i][:, 1:] for i in range(depth)})
        feats["final_layer"] = _velocity_tokens(out.velocity)
        feats["projector_0"] = out.projections[0][:, 1:]
        return feats

    return DiTProbe(hidden_fn, "noise_at_1", needs_cls_token=True)
