"""SE-CKNNA probe callback: the paper's "representation dynamics" watched live (docs/design.md, "SE-CKNNA"; docs/design.md,
"SE-CKNNA").

Every ``every_n_steps`` optimiser steps (and optionally at fit start) on a fixed probe set:

* **diffusion** (the probed network implements `vfmvae.dit.interface.DiffusionNetwork`): per-block CKNNA(k)
  between the network's token-mean features of the probe latents noised to t = 0.5 (x_t = 0.5 x + 0.5 eps,
  null condition, the network's own time convention; a class token in its state noised the same way) and the
  frozen reference VFM's clean pooled features of the same images. Logs
  ``probe/cknna/{embedder, block_i, final_layer[, projector_j], mean_over_blocks}``.
* **tokenizer** (a module with ``encode``, e.g. `VFMVAE`): SE-CKNNA of the pooled posterior sample z per
  condition (clean, equivariance, pixel noise; official transforms indexed by the probe-set position) against
  the reference VFM on the same transformed images. Logs ``probe/se_cknna/{condition, mean_over_conditions}``.

The features come from the one feature loop of `vfmvae.metrics.se_probe` (also used by `vfmvae se-cknna`);
this callback adds only when (the step schedule), where (probe set, EMA weights, ranks) and the logging: both
kinds log ``probe/seconds`` and a rows x step heat-map image (``probe/cknna_heatmap`` /
``probe/se_cknna_heatmap``) to every TensorBoard logger (`callbacks.tb_layout`). Cost is bounded by
``num_images`` (kernels are n x n) and ``max_blocks``; the reference features are computed once and cached.

Protocol on the LightningModule: ``probe_network()`` returns the network to probe (fallback: the attribute
``net``, then ``tokenizer``); optional ``probe_ema()`` returns a `vfmvae.utils.ema.EMA` or None (fallback:
``pl_module.ema`` or any callback's ``.ema`` that averages the network's parameters). With an EMA the probe
runs on the EMA weights (swapped in, then back). The probe set is described in
`callbacks/se_cknna_probe_config.py`.

Distributed: rank r runs chunks r, r + W, ... of the probe set (every rank the same number of forward passes),
the features are gathered on *all* ranks, and rank 0 alone computes CKNNA, logs and keeps the history (the
checkpointed state). Chunk c's noise comes from a generator seeded by (seed, c), so the numbers do not depend on
the world size, and the probe never touches the global RNG (training stays reproducible).
Put this callback *after* `EMACallback` in the list so a probe at step N sees the EMA of step N.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from callbacks.joint_alignment import JointAlignmentCallback
from callbacks.se_cknna_probe_config import PROBE_PRESETS, ProbeSet, SECKNNAProbeConfig, load_probe_set
from callbacks.tb_layout import log_image, log_scalars, render_heatmap
from vfmvae.dit.interface import is_diffusion_network
from vfmvae.metrics import cknna
from vfmvae.metrics.se_cknna import AGGREGATE_NAME, DINOv2SEExtractor, SigLIPSEExtractor, TokenizerSEExtractor, se_cknna
from vfmvae.metrics.se_probe import (
    chunk_seed,
    conditioned_features,
    dit_block_features,
    probe_chunks,
    probe_class_tokens,
    resize_hwc,
    run_chunks,
    select_blocks,
)
from vfmvae.metrics.se_transforms import condition_names
from vfmvae.tokenizer.loading import resolve_path
from vfmvae.utils.ema import EMA

log = logging.getLogger(__name__)

__all__ = ["SECKNNAProbeConfig", "PROBE_PRESETS", "ProbeSet", "load_probe_set", "SECKNNAProbeCallback"]

# Kept under their old names for the tests and users of the callback module.
_chunks, _select_blocks = probe_chunks, select_blocks


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
            from vfmvae.vfm import build_se_cknna_reference

            weights = resolve_path(self.config.reference_pretrained, "SECKNNAProbeCallback.reference_pretrained")
            if weights is None:
                log.warning(
                    "SE-CKNNA probe: reference %s has RANDOM weights (tests/demo only)", self.config.reference_vfm
                )
            with torch.random.fork_rng(devices=[]):  # the random init before loading must not shift training RNG
                self.vfm = build_se_cknna_reference(
                    self.config.reference_vfm, pretrained=weights, config=self.config.reference_config
                )
        net = self.probe_network(pl_module)
        if self._is_diffusion(net):
            self._check_latents(net)

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
    def _is_diffusion(net: nn.Module) -> bool:
        """A `DiffusionNetwork` (block probe) or a tokenizer with ``encode`` (SE probe); anything else is an error."""
        if is_diffusion_network(net):
            return True
        if callable(getattr(net, "encode", None)):
            return False
        raise TypeError(
            f"SECKNNAProbeCallback cannot probe a {type(net).__name__}: expected a tokenizer with encode() or a "
            "vfmvae.dit.interface.DiffusionNetwork"
        )

    def _check_latents(self, net: nn.Module) -> None:
        lat = self.probe_set.latents
        if lat is None:
            raise ValueError(
                "the diffusion probe needs latents: use source='latent_cache' (a cache written with "
                "store_images=true) or a dataset whose items carry 'latent'"
            )
        want = tuple(net.latent_shape)
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
        diffusion = self._is_diffusion(net)
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
                    self._reference = self._features(trainer, net, device, diffusion, reference=True)
                model = self._features(trainer, net, device, diffusion, reference=False)
        finally:
            if swap:
                ema.swap_out()
            for m, was in modes.items():
                m.training = was
        if not trainer.is_global_zero:
            return None
        scores = self._scores(diffusion, model)
        seconds = time.perf_counter() - start
        self.history.append({"step": int(step), "scores": scores, "seconds": float(seconds)})
        self.last_scores = scores
        group = "cknna" if diffusion else "se_cknna"
        metrics = {f"probe/{group}/{k}": v for k, v in scores.items()}
        log_scalars(trainer, {**metrics, "probe/seconds": seconds}, step)
        self._log_heatmap(trainer, group, step)
        return scores

    def _features(self, trainer: Trainer, net: nn.Module, device, diffusion: bool, reference: bool):
        """``{name: (N, D)}`` of the probe set: the reference VFM's or the model's (`vfmvae.metrics.se_probe`)."""
        c, ps = self.config, self.probe_set
        where = dict(rank=trainer.global_rank, world=trainer.world_size)
        if not diffusion:  # tokenizer: every SE condition, reference and model through the same loop
            if reference:
                extractor_for = lambda chunk: self._extractor(device)
            else:
                extractor_for = lambda chunk: TokenizerSEExtractor(
                    net.encode,
                    use_sample=c.use_posterior_sample,
                    device=device,
                    generator=torch.Generator(device=device).manual_seed(chunk_seed(c.seed, chunk)),
                )
            load = lambda idx: resize_hwc(ps.images[idx], c.image_size)
            return conditioned_features(
                extractor_for, load, len(ps), self._conditions(), batch_size=c.batch_size, **where
            )
        if reference:
            return run_chunks(
                lambda chunk, idx: self._reference_chunk(trainer, net, idx, device), len(ps), c.batch_size, **where
            )
        return run_chunks(lambda chunk, idx: self._model_chunk(net, chunk, idx, device), len(ps), c.batch_size, **where)

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

    def _reference_chunk(self, trainer, net, idx, device) -> dict[str, torch.Tensor]:
        images = self.probe_set.images[idx]
        out = {"clean": self._extractor(device).clean(np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy()))}
        if net.class_token_dim is not None:
            out["cls"] = self._class_tokens(trainer, net, images.to(device))
        return out

    def _class_tokens(self, trainer: Trainer, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The class token a network with one in its state takes with the probe latents (the official REG
        extractor: DINOv2 CLS of the image, bilinear without antialias; noised later by the probe)."""
        dim, source = int(net.class_token_dim), self.config.cls_source
        align = next(
            (cb for cb in trainer.callbacks if isinstance(cb, JointAlignmentCallback) and cb.vfm is not None), None
        )
        ref_ok = bool(getattr(self.vfm, "has_cls", False)) and int(self.vfm.hidden_size) == dim
        if source == "auto":
            source = "alignment" if align is not None else "reference" if ref_ok else "zeros"
        if source == "alignment":
            if align is None:
                raise ValueError("cls_source='alignment' but no joint-alignment callback is on the trainer")
            return probe_class_tokens(align.vfm, images, size=int(align.image_size))
        if source == "reference":
            if not ref_ok:
                raise ValueError(
                    f"cls_source='reference': {self.config.reference_vfm} has no CLS token of width "
                    f"{dim} (has_cls={getattr(self.vfm, 'has_cls', False)}, "
                    f"hidden={self.vfm.hidden_size})"
                )
            return probe_class_tokens(self.vfm, images, size=self.config.reference_resolution)
        return torch.zeros(len(images), dim, device=images.device)

    def _model_chunk(self, net, chunk, idx, device) -> dict[str, torch.Tensor]:
        generator = torch.Generator(device=device).manual_seed(chunk_seed(self.config.seed, chunk))
        cls = self._reference["cls"][idx].to(device) if net.class_token_dim is not None else None
        feats = dit_block_features(
            net,
            self.probe_set.latents[idx].to(device),
            noise_fraction=self.config.noise_fraction,
            class_tokens=cls,
            batch_size=len(idx),
            generator=generator,
        )
        keep = {f"block_{i}" for i in select_blocks(net.num_blocks, self.config.max_blocks)}
        return {k: v for k, v in feats.items() if not k.startswith("block_") or k in keep}

    def _scores(self, diffusion: bool, model: dict[str, torch.Tensor]) -> dict[str, float]:
        if not diffusion:
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
