"""Periodic sample grids during diffusion training, decoded by the tokenizer's decoder, to TensorBoard.

Every ``every_n_steps`` optimiser steps the network samples ``num_samples`` images with fixed noise
and fixed conditions (so successive grids are comparable), with the EMA weights when an
`callbacks.ema.EMACallback` is present, de-normalises the latents with the run's statistics and
decodes them with a decoder-only tokenizer (`vfmvae.tokenizer.loading.load_decoder`). The network is
driven only through `vfmvae.dit.interface.DiffusionNetwork` (its paper sampler, its condition type), by
the same `vfmvae.transport.sample_latents` as `vfmvae sample`. Decoded images become uint8 by the
paper protocol's truncation (`vfmvae.codec.to_uint8(x, "truncate")`, the official `tools/decode`). The grid
is logged as ``grid/samples`` (image) on rank 0.

Before training, the decoder must be the tokenizer the training latents were made with and explicit
``latent_stats`` the training cache's own, both by hash (`vfmvae.provenance_checks`, as the sampling command);
otherwise the grids would decode with wrong weights or colours and nothing would say so.

Every rank samples (a sharded FSDP network needs all ranks in each forward); only rank 0 decodes
and logs. The decoder is a plain attribute of the callback, never part of the LightningModule, so
it is not trained, averaged or checkpointed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from datamodules.latent_dataset import find_latent_dataset
from vfmvae.codec import to_uint8
from vfmvae.dit.interface import check_network
from vfmvae.provenance_checks import check_latent_stats, check_tokenizer_hash, export_weights_sha256
from vfmvae.tokenizer.loading import load_decoder, load_latent_stats, resolve_path
from vfmvae.transport.sampling import sample_latents, sampler_config
from vfmvae.utils.image_grid import image_grid

log = logging.getLogger(__name__)


class SampleGridCallback(Callback):
    """Log decoded sample grids every ``every_n_steps`` (see the module docstring).

    Args:
        tokenizer: decoder source for `load_decoder` (folder / official file / ``None`` = random demo decoder).
        tokenizer_preset: tokenizer preset for the ``None`` case (``"debug"`` in the demo).
        tokenizer_kwargs: official generator kwargs (file or dict) for an official release file.
        latent_stats: ``latents_stats.pt``; default: the statistics of the training latent dataset.
        every_n_steps, num_samples: cadence and grid size.
        sampler / num_steps / cfg_scale: sampler preset (default: the network's paper sampler) and overrides.
        label_mode: ``"balanced"`` (classes 0, 1, ...) or ``"random"`` (passed to the network's condition
            spec); seed: fixed noise and conditions.
        use_ema: sample with the EMA weights when an EMA callback exists.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        tokenizer_preset: str = "vfmvae-f16d32-siglip2",
        tokenizer_kwargs: str | dict | None = None,
        latent_stats: str | None = None,
        every_n_steps: int = 10_000,
        num_samples: int = 16,
        sampler: str | None = None,
        num_steps: int | None = 50,
        cfg_scale: float | None = None,
        label_mode: str = "balanced",
        seed: int = 0,
        use_ema: bool = True,
    ) -> None:
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError(f"every_n_steps ({every_n_steps}) and num_samples ({num_samples}) must be >= 1")
        self.tokenizer, self.tokenizer_preset, self.tokenizer_kwargs = tokenizer, tokenizer_preset, tokenizer_kwargs
        self.latent_stats = latent_stats
        self.every_n_steps, self.num_samples = int(every_n_steps), int(num_samples)
        self.sampler, self.num_steps, self.cfg_scale = sampler, num_steps, cfg_scale
        self.label_mode, self.seed, self.use_ema = label_mode, int(seed), use_ema
        self.decoder: torch.nn.Module | None = None
        self.normalizer = None
        self.last_grid: torch.Tensor | None = None
        self.num_logged = 0
        self._last_step = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        tokenizer = resolve_path(self.tokenizer, "SampleGridCallback.tokenizer")
        # On every rank (cheap: records only), so that all refuse alike instead of rank 0 alone.
        self._check_provenance(tokenizer, find_latent_dataset(trainer.datamodule))
        if not trainer.is_global_zero or self.decoder is not None:
            return
        kwargs = self.tokenizer_kwargs
        if isinstance(kwargs, str):
            kwargs = resolve_path(kwargs, "SampleGridCallback.tokenizer_kwargs", optional=True)
        self.decoder = load_decoder(tokenizer, self.tokenizer_preset, kwargs)

    def _check_provenance(self, tokenizer: str | None, cache: Any) -> None:
        """Refuse a decoder or statistics that the training latent cache was not made with (by hash)."""
        if cache is None:  # no latent cache to compare with
            return
        manifest, root = cache.manifest, getattr(cache, "root", "the latent cache")
        check_tokenizer_hash(
            (manifest.get("tokenizer") or {}).get("weights_sha256"),
            export_weights_sha256(tokenizer),
            subject="the network",
            tokenizer_source=f"SampleGridCallback.tokenizer {tokenizer}",
            fix=f"give the tokenizer the latent cache {root} was made with",
        )
        path = resolve_path(self.latent_stats, "SampleGridCallback.latent_stats", optional=True)
        if path is not None:
            self.normalizer = load_latent_stats(path)
            check_latent_stats(
                self.normalizer,
                (manifest.get("latent_stats") or {}).get("sha256"),
                stats_source=f"SampleGridCallback.latent_stats {path}",
                expected_source=f"the training latent cache {root}",
                fix="remove SampleGridCallback.latent_stats to decode with the training latents' own statistics",
            )

    def _normalizer(self, trainer: Trainer):
        if self.normalizer is None:
            # The run's own statistics come from the module (`DiffusionModule.latent_normalizer`: its latent cache).
            own = getattr(trainer.lightning_module, "latent_normalizer", None)
            data = own() if callable(own) and self.latent_stats is None else None
            stats = data.stats_dict() if data is not None else None
            path = resolve_path(self.latent_stats, "SampleGridCallback.latent_stats", optional=True)
            self.normalizer = load_latent_stats(path, stats)
        return self.normalizer

    def _ema(self, trainer: Trainer):
        if not self.use_ema:
            return None
        from callbacks.ema import EMACallback

        for cb in trainer.callbacks:
            if isinstance(cb, EMACallback) and cb.ema is not None:
                return cb.ema
        return None

    @torch.no_grad()
    def sample_grid(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor | None:
        """Sample on every rank; decode and return the uint8 grid on rank 0 (``None`` elsewhere)."""
        net = check_network(getattr(pl_module, "net", None), "SampleGridCallback's pl_module.net")
        config = sampler_config(net, self.sampler, cfg_scale=self.cfg_scale, num_steps=self.num_steps)
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        conditions = net.condition.draw(
            self.label_mode, self.num_samples, generator=torch.Generator().manual_seed(self.seed)
        ).to(pl_module.device)
        ema = self._ema(trainer)
        # The run's precision (e.g. bf16 autocast) also for the network here; the decoder runs in fp32 below.
        with trainer.precision_plugin.forward_context():
            if ema is not None:
                with ema.swap():
                    latents = sample_latents(net, config, conditions, generator=g)
            else:
                latents = sample_latents(net, config, conditions, generator=g)
        if not trainer.is_global_zero:
            return None
        normalizer = self._normalizer(trainer).to(latents.device)
        decoder = self.decoder.to(latents.device)
        # Decode in fp32 (docs/design.md, "Precision policy"); uint8 by truncation (official tools/decode).
        with torch.autocast(device_type=latents.device.type, enabled=False):
            images = to_uint8(decoder.decode(normalizer.denormalize(latents)), "truncate")
        return image_grid(images.cpu())

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        grid = self.sample_grid(trainer, pl_module)
        if grid is None:
            return
        self.last_grid = grid
        self.num_logged += 1
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image("grid/samples", grid, global_step=step)
