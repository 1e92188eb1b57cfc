"""SE-CKNNA probe callback: the paper's "representation dynamics" watched live (issue 13; diffusion.md §1.2, §1.4).

Every ``every_n_steps`` optimiser steps (and optionally at fit start) on a fixed probe set:

* **diffusion** (the probed network is a `LightningDiT` / `SiTREG`): per-block CKNNA(k) between the DiT's
  token-mean features of the probe latents noised to t = 0.5 (x_t = 0.5 x + 0.5 eps, null label, the model's own
  time convention, REG's class token noised the same way and excluded from the means; all via
  `vfmvae.metrics.se_cknna.dit_block_features`) and the frozen reference VFM's clean pooled features of the same
  images (§1.4). Logs ``probe/cknna/{embedder, block_i, final_layer[, projector_0], mean_over_blocks}``.
* **tokenizer** (a `VFMVAE`): SE-CKNNA of the pooled posterior sample z per condition (clean, equivariance,
  pixel noise; official transforms indexed by the probe-set position, §1.2) against the reference VFM on the
  same transformed images. Logs ``probe/se_cknna/{condition, mean_over_conditions}``.

Both log ``probe/seconds`` and a rows x step heat-map image (``probe/cknna_heatmap`` / ``probe/se_cknna_heatmap``)
to every TensorBoard logger (`callbacks.tb_layout`). Cost is bounded by ``num_images`` (kernels are n x n) and
``max_blocks`` (CKNNAs per probe); the reference features are computed once and cached.

Protocol on the LightningModule (docs/interfaces.md): ``probe_network()`` returns the network to probe (fallback:
the attribute ``net``, then ``tokenizer``); optional ``probe_ema()`` returns a `vfmvae.utils.ema.EMA` or None
(fallback: ``pl_module.ema`` or any callback's ``.ema`` that averages the network's parameters). With an EMA
the probe runs on the EMA weights (swapped in, then back). The probe set never comes from the training batch:
``source`` = ``latent_cache`` (a cache written with images; gives latents *and* pixels), ``image_folder``,
``demo`` (tokenizer only: no latents), or a ``dataset=`` object whose items hold ``image`` uint8 (3, H, W) and,
for diffusion, ``latent`` (C, h, w) normalised.

Distributed: the probe set is cut into equal chunks; rank r runs chunks r, r + W, ... (every rank the same
number of forward passes, so FSDP's collectives inside the forward line up), the features are gathered with
``all_gather_object`` on *all* ranks, and rank 0 alone computes CKNNA, logs and keeps the history (the
checkpointed state). Chunk c's noise comes from a generator seeded by (seed, c), so the numbers do not depend on
the world size, and the probe never touches the global RNG (training stays reproducible).
Put this callback *after* `EMACallback` in the list so a probe at step N sees the EMA of step N.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from callbacks.tb_layout import log_image, log_scalars, render_heatmap
from vfmvae.metrics import cknna
from vfmvae.metrics.se_cknna import (
    AGGREGATE_NAME,
    DINOv2SEExtractor,
    SigLIPSEExtractor,
    TokenizerSEExtractor,
    dit_block_features,
    lightningdit_probe,
    se_cknna,
    sit_reg_probe,
)
from vfmvae.metrics.se_transforms import (
    NOISE_LEVELS,
    SE_SEED,
    add_pixel_noise,
    condition_names,
    equivariance_params,
    noise_condition,
)
from vfmvae.utils.ema import EMA

log = logging.getLogger(__name__)

__all__ = ["SECKNNAProbeConfig", "PROBE_PRESETS", "ProbeSet", "load_probe_set", "SECKNNAProbeCallback"]

SOURCES = ("latent_cache", "image_folder", "demo", "dataset")
CLS_SOURCES = ("auto", "alignment", "reference", "zeros")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class SECKNNAProbeConfig:
    """What to probe and how often. ``every_n_steps=0`` disables the periodic probe; ``probe_on_fit_start`` also
    probes when training starts (hook ``on_train_start``; a resumed run probes its restored step unless the
    checkpoint already holds that probe).

    reference_*: the frozen VFM (a `vfmvae.vfm.build_vfm` preset, local weights, field overrides). DINOv2 presets
    use the official DINOv2 extractor (PIL bicubic to ``reference_resolution``, patch-token mean, CLS excluded),
    others the SigLIP one (input size as is, token mean). ``image_size``: tokenizer SE images (256 officially;
    other sizes are Lanczos-resized). ``conditions``: tokenizer SE conditions (None = all six).
    ``cls_source`` (REG): the class token fed with the latents: the joint-alignment callback's target, the
    reference VFM's CLS, or zeros; ``auto`` picks them in that order.
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
        from vfmvae.metrics.se_transforms import load_image

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
    from vfmvae.utils.paths import resolve_path

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


# ------------------------------------------------------------------------------------------------- helpers
def _chunks(n: int, batch_size: int) -> list[tuple[list[int], int]]:
    """Equal-size chunks ``(indices, valid)`` covering 0..n-1; the last one wraps around (padding is dropped)."""
    b = min(batch_size, n)
    return [([(c * b + j) % n for j in range(b)], min(b, n - c * b)) for c in range(math.ceil(n / b))]


def _chunk_seed(seed: int, chunk: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * int(chunk) + 1) % (2**63 - 1)


def _select_blocks(depth: int, max_blocks: int | None) -> list[int]:
    """All blocks, or ``max_blocks`` evenly spaced ones including the first and the last."""
    if max_blocks is None or max_blocks >= depth:
        return list(range(depth))
    return sorted({int(round(x)) for x in np.linspace(0, depth - 1, max_blocks)})


def _resize_hwc(images: torch.Tensor, size: int) -> list[np.ndarray]:
    """uint8 ``(B, 3, H, W)`` -> list of ``(size, size, 3)`` arrays (Lanczos when the side differs, as officially)."""
    from PIL import Image

    out = []
    for im in images.permute(0, 2, 3, 1).cpu().numpy():
        if im.shape[:2] != (size, size):
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS), dtype=np.uint8)
        out.append(np.ascontiguousarray(im))
    return out


def _condition_features(
    extractor: Any, images: list[np.ndarray], indices: list[int], conditions: list[str]
) -> dict[str, torch.Tensor]:
    """``{condition: (b, D)}`` with the official per-image transforms of probe positions ``indices`` (§1.2).

    The transform index is the position in the probe set; it equals the official index when the probe folder is
    the prepared evaluation set (stem-sorted) and ``num_images`` covers all of it.
    """
    sigma_of = {noise_condition(s): s for s in NOISE_LEVELS}
    out = {}
    for cond in conditions:
        if cond == "equivariance":
            out[cond] = torch.stack(
                [extractor.equivariance(im, equivariance_params(i, SE_SEED)) for im, i in zip(images, indices)]
            )
        elif cond in sigma_of:
            noisy = [add_pixel_noise(im, sigma_of[cond], i, SE_SEED) for im, i in zip(images, indices)]
            out[cond] = extractor.clean(np.stack(noisy))
        else:
            out[cond] = extractor.clean(np.stack(images))
    return out


def _all_gather(local: dict[int, Any], world: int) -> dict[int, Any]:
    """Merge every rank's ``{chunk: features}``; a collective that *all* ranks call (never under a rank check)."""
    if world <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return dict(local)
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, local)
    merged: dict[int, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


# ------------------------------------------------------------------------------------------------- callback
class SECKNNAProbeCallback(Callback):
    """Periodic CKNNA / SE-CKNNA probe (see the module docstring).

    Args:
        preset: a `PROBE_PRESETS` key (``"diffusion"``, ``"tokenizer"``, ``"debug"``).
        overrides: `SECKNNAProbeConfig` field overrides (YAML: ``init_args: {preset: diffusion, overrides:
            {root: outputs/latents, every_n_steps: 5000}}``). ``config``: a full config instead of preset+overrides.
        dataset: an in-memory probe source (items ``{"image": uint8 (3, H, W)[, "latent": (C, h, w)]}``).
    """

    def __init__(
        self,
        preset: str = "diffusion",
        overrides: dict[str, Any] | None = None,
        config: SECKNNAProbeConfig | None = None,
        dataset: Any | None = None,
    ) -> None:
        if config is None:
            if preset not in PROBE_PRESETS:
                raise ValueError(f"unknown probe preset {preset!r}; choose one of {sorted(PROBE_PRESETS)}")
            overrides = dict(overrides or {})
            unknown = sorted(set(overrides) - set(asdict(PROBE_PRESETS[preset])))
            if unknown:
                raise ValueError(f"unknown SECKNNAProbeConfig fields {unknown}")
            if "conditions" in overrides and overrides["conditions"] is not None:
                overrides["conditions"] = tuple(overrides["conditions"])
            config = replace(PROBE_PRESETS[preset], **overrides)
        if dataset is not None and config.source != "dataset":
            config = replace(config, source="dataset")
        self.config, self.dataset = config, dataset
        self.probe_set: ProbeSet | None = None
        self.vfm: nn.Module | None = None
        self.history: list[dict[str, Any]] = []  # rank 0: [{"step", "scores", "seconds"}]
        self.last_scores: dict[str, float] | None = None
        self._reference: dict[str, torch.Tensor] | None = None  # cached VFM features (+ "cls" for REG)
        self._last_step: int | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.probe_set is None:
            self.probe_set = load_probe_set(self.config, self.dataset)
        if self.vfm is None:
            from vfmvae.utils.paths import resolve_path
            from vfmvae.vfm import build_vfm

            weights = resolve_path(self.config.reference_pretrained, "SECKNNAProbeCallback.reference_pretrained")
            if weights is None:
                log.warning(
                    "SE-CKNNA probe: reference %s has RANDOM weights (tests/demo only)", self.config.reference_vfm
                )
            with torch.random.fork_rng(devices=[]):  # the random init before loading must not shift training RNG
                self.vfm = build_vfm(self.config.reference_vfm, pretrained=weights, config=self.config.reference_config)
        kind = self._kind(self.probe_network(pl_module))
        if kind != "tokenizer":
            self._check_latents(self.probe_network(pl_module))

    @staticmethod
    def probe_network(pl_module: LightningModule) -> nn.Module:
        """The module's ``probe_network()``, else its ``net`` (DiT) or ``tokenizer`` (VFMVAE) attribute."""
        if hasattr(pl_module, "probe_network"):
            return pl_module.probe_network()
        for name in ("net", "tokenizer"):
            if isinstance(getattr(pl_module, name, None), nn.Module):
                return getattr(pl_module, name)
        raise AttributeError(
            f"SECKNNAProbeCallback: {type(pl_module).__name__} defines no probe_network() "
            "and has no `net` / `tokenizer` module"
        )

    @staticmethod
    def _kind(net: nn.Module) -> str:
        from vfmvae.dit import LightningDiT, SiTREG
        from vfmvae.tokenizer import VFMVAE

        if isinstance(net, VFMVAE):
            return "tokenizer"
        if isinstance(net, SiTREG):
            return "reg"
        if isinstance(net, LightningDiT):
            return "lightningdit"
        raise TypeError(
            f"SECKNNAProbeCallback cannot probe a {type(net).__name__}: expected a VFMVAE, LightningDiT or SiTREG"
        )

    def _check_latents(self, net: nn.Module) -> None:
        lat = self.probe_set.latents
        if lat is None:
            raise ValueError(
                "the diffusion probe needs latents: use source='latent_cache' (a cache written with "
                "store_images=true) or a dataset whose items carry 'latent'"
            )
        want = (net.config.in_channels, net.config.input_size, net.config.input_size)
        if tuple(lat.shape[1:]) != want:
            raise ValueError(f"probe latents have shape {tuple(lat.shape[1:])}, the network takes {want}")

    # ------------------------------------------------------------------ when
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # `probe_on_fit_start` runs here: at `on_fit_start` a resumed run's global_step is not restored yet.
        # Decided from `_last_step` (restored on every rank), not the rank-0 history: all ranks must agree.
        if self.config.probe_on_fit_start and self._last_step != trainer.global_step:
            self.probe(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, every = trainer.global_step, self.config.every_n_steps
        if every and step > 0 and step % every == 0 and step != self._last_step:
            self.probe(trainer, pl_module)

    # ------------------------------------------------------------------ probe
    def probe(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float] | None:
        """One probe at the current step on every rank; returns the scores on rank 0 (None elsewhere)."""
        start = time.perf_counter()
        self._last_step = step = trainer.global_step
        net = self.probe_network(pl_module)
        kind = self._kind(net)
        device = next(net.parameters()).device
        self.vfm.to(device)
        modes = {m: m.training for m in net.modules()}
        ema = self._ema(trainer, pl_module, net) if self.config.use_ema else None
        swap = ema is not None and not ema.swapped
        net.eval()
        try:
            if swap:
                ema.swap_in()
            with torch.no_grad():
                if self._reference is None:
                    self._reference = self._sharded(
                        trainer, lambda c, idx: self._reference_chunk(trainer, kind, net, idx, device)
                    )
                model = self._sharded(trainer, lambda c, idx: self._model_chunk(kind, net, c, idx, device))
        finally:
            if swap:
                ema.swap_out()
            for m, was in modes.items():
                m.training = was
        if not trainer.is_global_zero:
            return None
        scores = self._scores(kind, model)
        seconds = time.perf_counter() - start
        self.history.append({"step": int(step), "scores": scores, "seconds": float(seconds)})
        self.last_scores = scores
        group = "se_cknna" if kind == "tokenizer" else "cknna"
        metrics = {f"probe/{group}/{k}": v for k, v in scores.items()}
        log_scalars(trainer, {**metrics, "probe/seconds": seconds}, step)
        self._log_heatmap(trainer, group, step)
        return scores

    def _sharded(self, trainer: Trainer, fn: Callable[[int, list[int]], dict[str, torch.Tensor]]):
        """Run ``fn(chunk, indices)`` over this rank's chunks, gather all ranks, concatenate -> ``{name: (N, D)}``."""
        chunks = _chunks(len(self.probe_set), self.config.batch_size)
        rank, world = trainer.global_rank, trainer.world_size
        local = {}
        for k in range(math.ceil(len(chunks) / world)):
            c = k * world + rank
            real = c < len(chunks)
            idx, valid = chunks[c if real else 0]
            feats = fn(c if real else 0, idx)  # idle ranks repeat chunk 0 (same forward count under FSDP)
            if real:
                local[c] = {name: v[:valid].float().cpu() for name, v in feats.items()}
        merged = _all_gather(local, world)
        names = merged[0].keys()
        return {name: torch.cat([merged[c][name] for c in sorted(merged)]) for name in names}

    def _extractor(self, device: torch.device):
        token_fn = lambda x: self.vfm(x, [-1])[0]
        if "dinov2" in self.config.reference_vfm.lower():
            return DINOv2SEExtractor(
                token_fn,
                resolution=self.config.reference_resolution,
                patch_size=int(self.vfm.patch_size),
                device=device,
            )
        return SigLIPSEExtractor(token_fn, device=device)

    def _conditions(self) -> list[str]:
        return list(self.config.conditions or condition_names())

    def _reference_chunk(self, trainer, kind, net, idx, device) -> dict[str, torch.Tensor]:
        images = self.probe_set.images[idx]
        if kind == "tokenizer":
            return _condition_features(
                self._extractor(device), _resize_hwc(images, self.config.image_size), idx, self._conditions()
            )
        out = {"clean": self._extractor(device).clean(np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy()))}
        if kind == "reg":
            out["cls"] = self._class_tokens(trainer, net, images.to(device))
        return out

    def _class_tokens(self, trainer: Trainer, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """REG's extra input for the probe latents (diffusion.md §1.4: DINOv2 CLS, noised by the probe)."""
        dim, source = int(net.config.cls_token_dim), self.config.cls_source
        from callbacks.joint_alignment import JointAlignmentCallback

        align = next(
            (cb for cb in trainer.callbacks if isinstance(cb, JointAlignmentCallback) and cb.vfm is not None), None
        )
        ref_ok = bool(getattr(self.vfm, "has_cls", False)) and int(self.vfm.hidden_size) == dim
        if source == "auto":
            source = "alignment" if align is not None else "reference" if ref_ok else "zeros"
        if source == "alignment":
            if align is None:
                raise ValueError("cls_source='alignment' but no joint-alignment callback is on the trainer")
            return align.targets(images)["cls_target"].float()
        if source == "reference":
            if not ref_ok:
                raise ValueError(
                    f"cls_source='reference': {self.config.reference_vfm} has no CLS token of width "
                    f"{dim} (has_cls={getattr(self.vfm, 'has_cls', False)}, "
                    f"hidden={self.vfm.hidden_size})"
                )
            _, cls = self.vfm(
                images.float() / 255.0,
                [-1],
                size=self.config.reference_resolution,
                interpolation="bicubic",
                return_cls=True,
            )
            return cls[0].float()
        return torch.zeros(len(images), dim, device=images.device)

    def _model_chunk(self, kind, net, chunk, idx, device) -> dict[str, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(_chunk_seed(self.config.seed, chunk))
        if kind == "tokenizer":
            extractor = TokenizerSEExtractor(
                net.encode, use_sample=self.config.use_posterior_sample, device=device, generator=generator
            )
            images = _resize_hwc(self.probe_set.images[idx], self.config.image_size)
            return _condition_features(extractor, images, idx, self._conditions())
        probe = sit_reg_probe(net) if kind == "reg" else lightningdit_probe(net)
        cls = self._reference["cls"][idx].to(device) if kind == "reg" else None
        feats = dit_block_features(
            probe,
            self.probe_set.latents[idx].to(device),
            noise_fraction=self.config.noise_fraction,
            cls_tokens=cls,
            batch_size=len(idx),
            generator=generator,
        )
        keep = {f"block_{i}" for i in _select_blocks(len(net.blocks), self.config.max_blocks)}
        return {k: v for k, v in feats.items() if not k.startswith("block_") or k in keep}

    def _scores(self, kind: str, model: dict[str, torch.Tensor]) -> dict[str, float]:
        if kind == "tokenizer":
            ref = {c: self._reference[c] for c in model}
            return se_cknna(model, ref, topk=self.config.topk)
        ref = self._reference["clean"]
        order = ["embedder"] + sorted((k for k in model if k.startswith("block_")), key=lambda k: int(k[6:]))
        order += [k for k in model if k not in order]
        scores = {name: cknna(model[name], ref, topk=self.config.topk) for name in order}
        blocks = [v for k, v in scores.items() if k.startswith("block_")]
        scores["mean_over_blocks"] = float(np.mean(blocks))
        return scores

    def _ema(self, trainer: Trainer, pl_module: LightningModule, net: nn.Module) -> EMA | None:
        """The EMA whose weights cover the probed network (see the module docstring), or None."""
        if hasattr(pl_module, "probe_ema"):
            return pl_module.probe_ema()
        ids = {id(p) for p in net.parameters()}
        for ema in [getattr(pl_module, "ema", None)] + [getattr(cb, "ema", None) for cb in trainer.callbacks]:
            if isinstance(ema, EMA) and any(id(p) in ids for m in ema.modules.values() for p in m.parameters()):
                return ema
        return None

    # ------------------------------------------------------------------ logging
    def heatmap(self) -> tuple[np.ndarray, list[str], list[int]] | None:
        """``(values (rows, steps), row names, steps)`` of the last ``heatmap_columns`` probes (rank 0)."""
        if not self.history:
            return None
        history = self.history[-self.config.heatmap_columns :]
        rows = [
            k
            for k in history[-1]["scores"]
            if k not in ("mean_over_blocks", AGGREGATE_NAME) and not k.startswith("projector_")
        ]
        values = np.array([[h["scores"].get(r, np.nan) for h in history] for r in rows], dtype=np.float64)
        return values, rows, [h["step"] for h in history]

    def _log_heatmap(self, trainer: Trainer, group: str, step: int) -> None:
        values, rows, steps = self.heatmap()
        what = (
            "SE-CKNNA(latent, VFM) per condition"
            if group == "se_cknna"
            else f"CKNNA(DiT block at t={self.config.noise_fraction}, VFM)"
        )
        image = render_heatmap(
            values,
            rows,
            steps,
            title=f"{what}; ref {self.config.reference_vfm}, n={len(self.probe_set)}, k={self.config.topk}",
        )
        log_image(trainer, f"probe/{group}_heatmap", image, step)

    # ------------------------------------------------------------------ checkpointing
    def _identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "reference_vfm": c.reference_vfm,
            "source": c.source,
            "root": c.root,
            "num_images": c.num_images,
            "seed": c.seed,
            "topk": c.topk,
            "noise_fraction": c.noise_fraction,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "history": list(self.history), "last_step": self._last_step, "identity": self._identity()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("identity") != self._identity():
            log.warning(
                "SE-CKNNA probe: the checkpoint's probe setup %s differs from this run's %s; the restored "
                "history is not comparable with new probes",
                state_dict.get("identity"),
                self._identity(),
            )
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self._last_step = state_dict.get("last_step")
        self.last_scores = self.history[-1]["scores"] if self.history else None
