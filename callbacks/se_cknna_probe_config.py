"""SE-CKNNA probe setup: what to probe and how often (`SECKNNAProbeConfig`, `PROBE_PRESETS`), and the fixed
probe set drawn once from a latent cache, an image folder, the demo photos or an in-memory dataset
(`load_probe_set`). Used by `callbacks/se_cknna_probe.py`; the probe set never comes from the training batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vfmvae.metrics.se_transforms import condition_names, load_image
from vfmvae.tokenizer.loading import resolve_path

__all__ = ["SECKNNAProbeConfig", "PROBE_PRESETS", "ProbeSet", "load_probe_set"]

SOURCES = ("latent_cache", "image_folder", "demo", "dataset")
CLS_SOURCES = ("auto", "alignment", "reference", "zeros")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class SECKNNAProbeConfig:
    """What to probe and how often. ``every_n_steps=0`` disables the periodic probe; ``probe_on_fit_start`` also
    probes when training starts (hook ``on_train_start``; a resumed run probes its restored step unless the
    checkpoint already holds that probe).

    reference_*: the frozen VFM (a `vfmvae.vfm.build_se_cknna_reference` preset, local weights, overrides). DINOv2 presets
    use the official DINOv2 extractor (PIL bicubic to ``reference_resolution``, patch-token mean, CLS excluded),
    others the SigLIP one (input size as is, token mean). ``image_size``: tokenizer SE images (256 officially;
    other sizes are Lanczos-resized). ``conditions``: tokenizer SE conditions (None = all six).
    ``cls_source`` (networks with a class token in their state, REG): the class token fed with the latents,
    from the joint-alignment callback's VFM (at its ``image_size``), the reference VFM (at
    ``reference_resolution``), or zeros; ``auto`` picks them in that order. Either VFM sees the image resized
    bilinearly without antialiasing (the official prefetch, `vfmvae.metrics.se_probe.probe_class_tokens`).
    """

    every_n_steps: int = 10_000
    probe_on_fit_start: bool = False
    source: str = "latent_cache"
    root: str | None = None
    num_images: int = 256
    seed: int = 0
    image_size: int = 256
    reference_vfm: str = "dinov2-vitb14"
    reference_pretrained: str | None = None
    reference_config: dict[str, Any] | None = None
    reference_resolution: int = 224
    noise_fraction: float = 0.5
    max_blocks: int | None = None
    conditions: tuple[str, ...] | None = None
    use_posterior_sample: bool = True
    cls_source: str = "auto"
    batch_size: int = 32
    topk: int = 10
    use_ema: bool = True
    heatmap_columns: int = 64

    def __post_init__(self) -> None:
        if self.every_n_steps < 0 or self.batch_size < 1 or self.heatmap_columns < 1:
            raise ValueError("every_n_steps must be >= 0, batch_size and heatmap_columns >= 1")
        if self.source not in SOURCES:
            raise ValueError(f"unknown probe source {self.source!r}; choose one of {SOURCES}")
        if self.source in ("latent_cache", "image_folder") and not self.root:
            raise ValueError(f"probe source {self.source!r} needs root= (the folder to read)")
        if not isinstance(self.topk, int) or self.topk < 2 or self.num_images < max(4, self.topk + 1):
            raise ValueError(
                f"need topk >= 2 and num_images >= max(4, topk + 1), got topk={self.topk}, num_images={self.num_images}"
            )
        if not 0.0 <= self.noise_fraction <= 1.0:
            raise ValueError(f"noise_fraction must be in [0, 1], got {self.noise_fraction}")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1 or None, got {self.max_blocks}")
        if self.cls_source not in CLS_SOURCES:
            raise ValueError(f"unknown cls_source {self.cls_source!r}; choose one of {CLS_SOURCES}")
        if self.conditions is not None:
            unknown = [c for c in self.conditions if c not in condition_names()]
            if unknown or not self.conditions:
                raise ValueError(f"unknown SE conditions {unknown or '[] (empty)'}; known: {condition_names()}")


PROBE_PRESETS: dict[str, SECKNNAProbeConfig] = {
    # 256 cached ImageNet latents + pixels vs DINOv2-B/14 (timm .pth, as REG loads it), every 10k steps.
    "diffusion": SECKNNAProbeConfig(root="${LATENTS}"),
    # 256 validation images, all six SE conditions, every 5k tokenizer iterations.
    "tokenizer": SECKNNAProbeConfig(source="image_folder", root="${IMAGENET_VAL}", every_n_steps=5_000),
    # Tiny CPU probe for tests: in-memory dataset, debug DINOv2 at 56 px, k = 3.
    "debug": SECKNNAProbeConfig(
        every_n_steps=2,
        source="dataset",
        num_images=8,
        image_size=64,
        reference_vfm="debug-dinov2",
        reference_config={"compute_dtype": "float32"},
        reference_resolution=56,
        topk=3,
        batch_size=4,
    ),
}


# ------------------------------------------------------------------------------------------------- probe set
@dataclass
class ProbeSet:
    """The fixed probe images ``uint8 (N, 3, H, W)``, their latents ``(N, C, h, w)`` (or None) and keys."""

    images: torch.Tensor
    latents: torch.Tensor | None
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


class _ImageFiles:
    """Images under ``root`` (recursive), sorted by stem (the official SE order), Lanczos to a square side."""

    def __init__(self, root: str, size: int) -> None:
        self.paths = sorted(
            (p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: (p.stem, str(p))
        )
        if not self.paths:
            raise FileNotFoundError(f"probe image folder {root} holds no {IMAGE_SUFFIXES} images")
        self.size, self._load = size, load_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = torch.from_numpy(self._load(self.paths[i], self.size)).permute(2, 0, 1).contiguous()
        return {"image": image, "key": self.paths[i].stem}


def _open_source(config: SECKNNAProbeConfig, dataset: Any | None) -> Any:
    if dataset is not None:
        return dataset
    if config.source == "dataset":
        raise ValueError("probe source 'dataset' needs the dataset= argument of the callback")
    root = resolve_path(config.root, "SECKNNAProbeCallback.root")
    if config.source == "latent_cache":
        from datamodules.latent_dataset import LatentDataset

        # Fixed posterior samples (lightningdit policy): the same latents at every probe.
        return LatentDataset(root, policy="lightningdit", return_images=True, seed=config.seed)
    if config.source == "image_folder":
        return _ImageFiles(root, config.image_size)
    from datamodules.demo_data import DEMO_CLASSES, DemoDataConfig, DemoPhotoDataset

    per_class = math.ceil(config.num_images / len(DEMO_CLASSES))
    return DemoPhotoDataset(DemoDataConfig(resolution=config.image_size, num_per_class=per_class, seed=config.seed))


def load_probe_set(config: SECKNNAProbeConfig, dataset: Any | None = None) -> ProbeSet:
    """``num_images`` items drawn once (seeded, sorted indices) from the configured source; deterministic."""
    ds = _open_source(config, dataset)
    n = len(ds)
    if n <= config.topk or n < 4:
        raise ValueError(
            f"the probe source holds {n} images; CKNNA with topk={config.topk} needs at least {max(4, config.topk + 1)}"
        )
    if n > config.num_images:
        g = torch.Generator().manual_seed(config.seed)
        indices = sorted(torch.randperm(n, generator=g)[: config.num_images].tolist())
    else:
        indices = list(range(n))
    items = [ds[i] for i in indices]
    bad = [
        i
        for i, it in zip(indices, items)
        if not isinstance(it, dict)
        or "image" not in it
        or not torch.is_tensor(it["image"])
        or it["image"].dtype != torch.uint8
        or it["image"].ndim != 3
    ]
    if bad:
        raise ValueError(f"probe items {bad[:5]} lack an 'image' uint8 (3, H, W) tensor")
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"probe images have different shapes {sorted(shapes)}; use a resizing source")
    latents = None
    if all("latent" in it for it in items):
        latents = torch.stack([torch.as_tensor(it["latent"]).float() for it in items])
    keys = [str(it.get("key", i)) for i, it in zip(indices, items)]
    return ProbeSet(torch.stack([it["image"] for it in items]), latents, keys)
