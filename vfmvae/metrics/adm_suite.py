"""The ADM evaluation suite in PyTorch: gFID, sFID, IS, precision, recall (docs/design.md, "Evaluation protocol").

Mirrors `openai/guided-diffusion/evaluations/evaluator.py`:
- activations (pool_3, mixed_6/conv[..., :7]) of every image of both batches (`arr_0`, uint8 NHWC);
- reference statistics are taken from the reference `.npz` when it holds `mu, sigma, mu_s, sigma_s` (ADM's
  `read_statistics`), otherwise computed from its activations; the reference *images* (`arr_0`) are still needed
  for precision/recall, which ADM computes on pool_3 activations of both sets;
- IS on the samples only, ADM split convention (chunks of 5000);
- FID / sFID with the robust float64 Fréchet distance.

Computed activations/statistics are cached on disk under a key made of the images' content hash and the feature
extractor's fingerprint, so re-evaluating a reference batch is free.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .frechet import FeatureStatistics, compute_statistics
from .inception import extract_features
from .inception_score import ADM_IS_SPLIT_SIZE, inception_score
from .precision_recall import precision_recall

__all__ = [
    "load_images",
    "ImageBatch",
    "load_batch",
    "check_resolutions",
    "BatchActivations",
    "compute_activations",
    "evaluate_adm",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_VERSION = "adm-suite-v1"


def _check_images(images: np.ndarray, source: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise TypeError(f"{source}: images must be uint8 in [0, 255] (ADM format), got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{source}: images must be (N, H, W, 3) uint8 NHWC, got shape {images.shape}")
    return images


def _load_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: all images must have the same size, found {sorted(shapes)[:4]}")
    return np.stack(arrays)


def load_images(path: str | os.PathLike, key: str = "arr_0") -> np.ndarray:
    """uint8 NHWC images from an ADM `.npz` (`arr_0`), a `.npy`, or a folder of image files (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        return _check_images(_load_folder(path), str(path))
    if not path.is_file():
        raise FileNotFoundError(f"image source not found: {path}")
    if path.suffix == ".npy":
        return _check_images(np.load(path), str(path))
    with np.load(path) as data:
        if key not in data.files:
            raise KeyError(f"{path} has no '{key}' array (found {data.files})")
        return _check_images(data[key], str(path))


@dataclass
class ImageBatch:
    """A sample or reference batch: images (optional for a stats-only reference) and precomputed statistics.

    `pool`: precomputed pool_3 features `(N, 2048)` of reference images (precision/recall without the images,
    `vfmvae reference-stats`); `resolution`: the images' side when the file states it without images.
    """

    source: str
    images: np.ndarray | None = None
    stats: FeatureStatistics | None = None
    stats_spatial: FeatureStatistics | None = None
    pool: np.ndarray | None = None
    resolution: int | None = None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the images, or (resolution, resolution) for a statistics-only file that records it."""
        if self.images is not None:
            return (int(self.images.shape[1]), int(self.images.shape[2]))
        return None if self.resolution is None else (self.resolution, self.resolution)


def load_batch(path: str | os.PathLike) -> ImageBatch:
    """Load an ADM reference/sample `.npz` (`arr_0` and/or `mu, sigma, mu_s, sigma_s`) or an image folder."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            files = set(data.files)
            stats = stats_s = None
            if {"mu", "sigma"} <= files:
                stats = FeatureStatistics(data["mu"].astype(np.float64), data["sigma"].astype(np.float64))
            if {"mu_s", "sigma_s"} <= files:
                stats_s = FeatureStatistics(data["mu_s"].astype(np.float64), data["sigma_s"].astype(np.float64))
            images = _check_images(data["arr_0"], str(path)) if "arr_0" in files else None
            pool = data["pool"].astype(np.float32) if "pool" in files else None
            resolution = int(data["resolution"]) if "resolution" in files else None
        if images is None and stats is None:
            raise KeyError(f"{path} holds neither images ('arr_0') nor statistics ('mu', 'sigma'): {sorted(files)}")
        return ImageBatch(str(path), images, stats, stats_s, pool, resolution)
    return ImageBatch(str(path), load_images(path))


def check_resolutions(samples: ImageBatch, reference: ImageBatch) -> None:
    """Refuse samples and a reference batch of different image sizes (e.g. 512 px samples, a 256 px reference).

    Inception resizes everything to 299 px, so a mismatch gives numbers, only wrong ones. A reference that
    states no size (statistics only, no `resolution` key: ADM's files always hold images) cannot be checked.
    """
    got, ref = samples.image_size, reference.image_size
    if got is not None and ref is not None and got != ref:
        raise ValueError(
            f"the samples ({samples.source}) are {got[0]}x{got[1]} but the reference batch ({reference.source}) is "
            f"{ref[0]}x{ref[1]}: compare with the reference of the samples' resolution (ADM's "
            f"VIRTUAL_imagenet{got[0]}.npz, or `vfmvae reference-stats --image-size {got[0]}`)"
        )


def images_content_hash(images: np.ndarray) -> str:
    h = hashlib.sha256(f"{images.shape}|{images.dtype}".encode())
    flat = images.reshape(len(images), -1) if len(images) else images
    for start in range(0, len(flat), 256):
        h.update(np.ascontiguousarray(flat[start : start + 256]).tobytes())
    return h.hexdigest()


@dataclass
class BatchActivations:
    """Per-image features `pool (N, 2048)`, `logits (N, 1008)` and their pool / spatial statistics."""

    pool: np.ndarray
    logits: np.ndarray
    stats: FeatureStatistics
    stats_spatial: FeatureStatistics


def _fingerprint(extractor: nn.Module) -> str:
    fp = getattr(extractor, "fingerprint", None)
    if fp is None:  # e.g. a tiny test network: hash its parameters
        h = hashlib.sha256(type(extractor).__name__.encode())
        for name, t in extractor.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        fp = h.hexdigest()
    return fp


def compute_activations(
    images: np.ndarray,
    extractor: nn.Module,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> BatchActivations:
    """Features and statistics of uint8 NHWC images, read from / written to `cache_dir` by content hash."""
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(
            f"{CACHE_VERSION}|{images_content_hash(images)}|{_fingerprint(extractor)}".encode()
        ).hexdigest()
        cache_file = Path(cache_dir) / f"adm_acts_{key[:32]}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as c:
                return BatchActivations(
                    c["pool"],
                    c["logits"],
                    FeatureStatistics(c["mu"], c["sigma"]),
                    FeatureStatistics(c["mu_s"], c["sigma_s"]),
                )
    feats = extract_features(images, extractor, batch_size=batch_size, device=device)
    stats, stats_s = compute_statistics(feats["pool"]), compute_statistics(feats["spatial"])
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            pool=feats["pool"],
            logits=feats["logits"],
            mu=stats.mu,
            sigma=stats.sigma,
            mu_s=stats_s.mu,
            sigma_s=stats_s.sigma,
        )
        os.replace(tmp, cache_file)  # atomic: a crash never leaves a half-written cache entry
    return BatchActivations(feats["pool"], feats["logits"], stats, stats_s)


def evaluate_adm(
    samples: ImageBatch,
    reference: ImageBatch,
    extractor: nn.Module,
    *,
    num_samples: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    prc_k: int = 3,
    is_split_size: int = ADM_IS_SPLIT_SIZE,
    pr_distance_dtype: str = "float16",
) -> dict[str, float | None]:
    """ADM metrics of `samples` against `reference`: `{"fid", "sfid", "inception_score", "precision", "recall", ...}`.

    `num_samples`: evaluate exactly the first N samples (error when fewer exist); None uses all (ADM behaviour).
    `pr_distance_dtype`: precision/recall distances, ``"float16"`` = ADM's float16 blocks with the float32
    fallback (the paper protocol), ``"float32"`` / ``"float64"`` = plain distances in that precision.
    """
    if samples.images is None:
        raise ValueError(f"{samples.source}: the sample batch needs images ('arr_0'), not only statistics")
    check_resolutions(samples, reference)
    images = samples.images
    if num_samples is not None:
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        if len(images) < num_samples:
            raise ValueError(f"{samples.source} holds {len(images)} images, fewer than the {num_samples} requested")
        images = images[:num_samples]
    acts = compute_activations(images, extractor, batch_size=batch_size, device=device, cache_dir=cache_dir)
    ref_acts = None
    if reference.images is not None:
        ref_acts = compute_activations(
            reference.images, extractor, batch_size=batch_size, device=device, cache_dir=cache_dir
        )
    ref_stats = reference.stats or (ref_acts.stats if ref_acts else None)
    ref_stats_s = reference.stats_spatial or (ref_acts.stats_spatial if ref_acts else None)
    results: dict[str, float | None] = {
        "num_samples": float(len(images)),
        "inception_score": inception_score(acts.logits, split_size=is_split_size),
        "fid": acts.stats.frechet_distance(ref_stats),
        # None = not computable from this reference (no spatial stats / no reference images), never a NaN.
        "sfid": None,
        "precision": None,
        "recall": None,
    }
    if ref_stats_s is not None:
        results["sfid"] = acts.stats_spatial.frechet_distance(ref_stats_s)
    ref_pool = ref_acts.pool if ref_acts is not None else reference.pool  # images win over stored features
    if ref_pool is not None:
        results["num_reference"] = float(len(ref_pool))
        results.update(precision_recall(ref_pool, acts.pool, k=prc_k, dtype=pr_distance_dtype, device=device))
    return results
