"""The one SE-CKNNA feature loop: run a probe set through a model and the reference VFM, condition by
condition, in chunks (docs/design.md, "SE-CKNNA").

Shared by `vfmvae se-cknna` (files on disk, one process) and `callbacks/se_cknna_probe.py` (an
in-memory probe set during training, every rank): the callback only adds when / where / logging.

* :func:`run_chunks`: equal-size chunks of the probe set (the last wraps around; the padding is dropped),
  chunk ``c`` on rank ``c % world``, idle ranks repeat chunk 0 so every rank makes the same number of
  forward passes (FSDP's collectives inside the forward line up), results gathered on all ranks.
* :func:`condition_features`: one chunk's pooled features per SE condition, with the official per-image
  transforms indexed by the image's position in the (stem-sorted) probe set.
* :func:`dit_block_features`: token-mean block features of any `vfmvae.dit.interface.DiffusionNetwork` on
  latents noised to ``noise_fraction`` (paper: t = 0.5), in the network's own time convention, with the
  null condition; REG's class token is noised the same way (latent noise first, then class-token noise,
  as the official extractor). Which tokens each feature averages is the network's answer
  (``block_features``).
* :func:`probe_class_tokens`: the class token REG takes for probe latents: DINOv2 ``x_norm_clstoken`` of the
  image resized to 224 px **bilinear without antialiasing** (official
  `tools/evaluate_alignment/diffusions/prefetch_for_diffusion_by_vfm_vae.py`); a VFM without a CLS token
  gives the mean patch token (the joint-alignment substitute).

Each chunk's random draws come from a generator seeded by ``(seed, chunk)``, so the numbers do not depend
on the world size, and nothing here touches the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vfmvae.codec import uint8_to_unit
from vfmvae.transport.paths import TimeConvention, parse_convention
from vfmvae.utils.progress import progress

from .numerics import full_fp32
from .se_transforms import NOISE_LEVELS, SE_SEED, add_pixel_noise, equivariance_params, noise_condition

__all__ = [
    "all_gather_chunks",
    "chunk_seed",
    "condition_features",
    "conditioned_features",
    "dit_block_features",
    "probe_chunks",
    "probe_class_tokens",
    "resize_hwc",
    "run_chunks",
    "select_blocks",
]

ChunkFn = Callable[[int, list[int]], dict[str, torch.Tensor]]


def probe_chunks(n: int, batch_size: int) -> list[tuple[list[int], int]]:
    """Equal-size chunks ``(indices, valid)`` covering 0..n-1; the last one wraps around (padding is dropped)."""
    b = min(batch_size, n)
    return [([(c * b + j) % n for j in range(b)], min(b, n - c * b)) for c in range(math.ceil(n / b))]


def chunk_seed(seed: int, chunk: int) -> int:
    """Seed of chunk ``chunk``'s generator (independent of the world size)."""
    return (int(seed) * 1_000_003 + 7919 * int(chunk) + 1) % (2**63 - 1)


def select_blocks(depth: int, max_blocks: int | None) -> list[int]:
    """All blocks, or ``max_blocks`` evenly spaced ones including the first and the last."""
    if max_blocks is None or max_blocks >= depth:
        return list(range(depth))
    return sorted({int(round(x)) for x in np.linspace(0, depth - 1, max_blocks)})


def all_gather_chunks(local: dict[int, Any], world: int) -> dict[int, Any]:
    """Merge every rank's ``{chunk: features}``; a collective that *all* ranks call (never under a rank check)."""
    if world <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return dict(local)
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, local)
    merged: dict[int, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def run_chunks(
    fn: ChunkFn, n: int, batch_size: int, *, rank: int = 0, world: int = 1, desc: str = "features"
) -> dict[str, torch.Tensor]:
    """Run ``fn(chunk, indices) -> {name: (b, D)}`` over this rank's chunks, gather all ranks, concatenate
    -> ``{name: (n, D)}`` float32 on CPU, rows in probe-set order. ``desc`` names the progress bar (drawn only
    when a command turned bars on, `vfmvae.utils.progress`)."""
    chunks = probe_chunks(n, batch_size)
    local = {}
    steps = math.ceil(len(chunks) / world)
    for k in progress(range(steps), total=steps, desc=desc, unit="chunk"):
        c = k * world + rank
        real = c < len(chunks)
        idx, valid = chunks[c if real else 0]
        feats = fn(c if real else 0, idx)  # idle ranks repeat chunk 0 (same forward count under FSDP)
        if real:
            local[c] = {name: v[:valid].float().cpu() for name, v in feats.items()}
    merged = all_gather_chunks(local, world)
    names = merged[0].keys()
    return {name: torch.cat([merged[c][name] for c in sorted(merged)]) for name in names}


def resize_hwc(images: torch.Tensor, size: int) -> list[np.ndarray]:
    """uint8 ``(B, 3, H, W)`` -> list of ``(size, size, 3)`` arrays (Lanczos when the side differs, as officially)."""
    from PIL import Image

    out = []
    for im in images.permute(0, 2, 3, 1).cpu().numpy():
        if im.shape[:2] != (size, size):
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS), dtype=np.uint8)
        out.append(np.ascontiguousarray(im))
    return out


def condition_features(
    extractor: Any,
    images: Sequence[np.ndarray],
    indices: Sequence[int],
    conditions: Sequence[str],
    *,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    seed: int = SE_SEED,
) -> dict[str, torch.Tensor]:
    """``{condition: (b, D)}`` for uint8 ``(H, W, 3)`` images at probe positions ``indices``.

    The transform index is the position in the probe set; it equals the official index when the probe
    folder is the prepared evaluation set (stem-sorted) and the probe covers all of it.
    """
    sigma_of = {noise_condition(s): s for s in noise_levels}
    out = {}
    for cond in conditions:
        if cond == "equivariance":
            out[cond] = torch.stack(
                [extractor.equivariance(im, equivariance_params(i, seed)) for im, i in zip(images, indices)]
            )
        elif cond in sigma_of:
            noisy = [add_pixel_noise(im, sigma_of[cond], i, seed) for im, i in zip(images, indices)]
            out[cond] = extractor.clean(np.stack(noisy))
        else:
            out[cond] = extractor.clean(np.stack(list(images)))
    return out


def conditioned_features(
    extractor_for: Callable[[int], Any],
    load_images: Callable[[list[int]], Sequence[np.ndarray]],
    n: int,
    conditions: Sequence[str],
    *,
    batch_size: int = 32,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    seed: int = SE_SEED,
    rank: int = 0,
    world: int = 1,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """``{condition: (n, D)}`` of a probe set of ``n`` images: chunk ``c`` loads its images with
    ``load_images(indices)`` and runs the extractor ``extractor_for(c)`` on every condition."""

    def chunk(c: int, idx: list[int]) -> dict[str, torch.Tensor]:
        images = load_images(idx)
        return condition_features(extractor_for(c), images, idx, conditions, noise_levels=noise_levels, seed=seed)

    return run_chunks(chunk, n, batch_size, rank=rank, world=world, desc=desc)


@torch.no_grad()
@full_fp32()
def dit_block_features(
    net: Any,
    latents: torch.Tensor,
    *,
    noise_fraction: float = 0.5,
    class_tokens: torch.Tensor | None = None,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Token-mean features ``{name: (N, D)}`` of normalised latents ``(N, C, h, w)`` noised to ``noise_fraction``.

    ``x_t = (1 - s) x + s eps`` (s = 0.5 in the paper), null condition, time in the network's own
    convention (data at one: ``1 - s``; noise at one: ``s``). A network with a class token in its state
    needs ``class_tokens (N, D)``, noised the same way after the latent noise.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (N, C, h, w), got {tuple(latents.shape)}")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
    with_cls = getattr(net, "class_token_dim", None) is not None
    if with_cls and (class_tokens is None or len(class_tokens) != len(latents)):
        raise ValueError("this network carries a class token: give one per latent (class_tokens (N, D))")
    s = noise_fraction
    t_model = 1.0 - s if parse_convention(net.time_convention) == TimeConvention.DATA_AT_ONE else s
    out: dict[str, list[torch.Tensor]] = {}
    starts = range(0, len(latents), batch_size)
    for start in progress(starts, total=len(starts), desc="DiT block features"):
        parts = [latents[start : start + batch_size].float()]
        if with_cls:
            parts.append(class_tokens[start : start + batch_size].float())
        noisy = [(1 - s) * c + s * torch.randn(c.shape, generator=generator, device=c.device) for c in parts]
        state = noisy[0] if len(noisy) == 1 else tuple(noisy)
        x = noisy[0]
        t = torch.full((len(x),), t_model, device=x.device)
        y = net.condition.null(len(x), x.device)
        for name, tokens in net.block_features(state, t, y).items():
            out.setdefault(name, []).append(tokens.float().mean(1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def probe_class_tokens(vfm: Any, images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """``(B, D)`` class tokens of uint8 images ``(B, 3, H, W)``: bilinear resize to ``size`` without
    antialiasing (the official diffusion prefetch), the VFM's final CLS token, or its mean patch token when
    it has none."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"probe_class_tokens takes uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}"
        )
    x = uint8_to_unit(images)
    if tuple(x.shape[-2:]) != (size, size):  # resized here so the rule is visible (no antialias)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if bool(getattr(vfm, "has_cls", False)):
        _, cls = vfm(x, [-1], return_cls=True)
        return cls[0].float()
    return vfm(x, [-1])[0].float().mean(dim=1)
