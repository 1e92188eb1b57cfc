"""Reconstruction grids in TensorBoard: input | reconstruction | multi-scale outputs, every N steps.

One row per image: the input, the EMA reconstruction (sampled latent; docs/design.md, "Evaluation protocol"), then the decoder's
progressive outputs (Progressive Resolution Reconstruction, largest first), each upsampled with
nearest-neighbour to the input size so the coarse scales stay visibly coarse. Images come from a
fixed held-out batch (the first validation batch, or the first training batch when there is no
validation data) so that successive grids are comparable.

Works with any LightningModule exposing `reconstruct(images01, generator=..., return_multiscale=True)`
(-> `DecoderOutput` with `.image` and `.multiscale`), e.g. `lightning_modules.tokenizer.TokenizerModule`;
the EMA weights are those of the run's `callbacks.ema.EMACallback`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.ema import find_ema
from vfmvae.codec import to_uint8, uint8_to_unit
from vfmvae.utils.image_grid import image_grid

__all__ = ["ReconstructionGridCallback", "reconstruction_grid"]


def reconstruction_grid(
    images: torch.Tensor, recon: torch.Tensor, multiscale: dict[int, torch.Tensor] | list
) -> torch.Tensor:
    """uint8 ``(3, H', W')`` grid, one row per image: input | reconstruction | scales (largest first).

    ``images``: the inputs, uint8 or float in [0, 1]; ``recon`` and the ``multiscale`` outputs in [-1, 1]
    (scales are upsampled with nearest-neighbour to the input size). Float images become pixels the way
    TensorBoard stores them (``to_uint8(.., "truncate")``); tiles by `vfmvae.utils.image_grid`.
    """
    if images.dim() != 4 or images.shape != recon.shape:
        raise ValueError(
            f"reconstruction_grid: input {tuple(images.shape)} and reconstruction "
            f"{tuple(recon.shape)} must be equal (B, 3, H, W) batches"
        )
    scales = list(multiscale.values()) if isinstance(multiscale, dict) else list(multiscale)
    size = tuple(images.shape[-2:])
    first = images.cpu() if images.dtype == torch.uint8 else to_uint8(images.cpu(), "truncate", value_range="unit")
    columns = [first, to_uint8(recon.cpu(), "truncate")]
    columns += [to_uint8(F.interpolate(s.float(), size=size, mode="nearest").cpu(), "truncate") for s in scales]
    tiles = torch.stack(columns, dim=1)  # (B, cols, 3, H, W): row-major tiles
    return image_grid(tiles.flatten(0, 1), nrow=len(columns))


class ReconstructionGridCallback(Callback):
    """Log a reconstruction grid every `every_n_steps` optimiser steps (and at the end of fit).

    Args:
        every_n_steps: interval in training steps (iterations); 0 disables the periodic grids.
        num_images: rows of the grid (taken from the first validation batch).
        use_ema: reconstruct with the EMA weights (as evaluation does).
        tag: TensorBoard tag.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_images: int = 8,
        use_ema: bool = True,
        tag: str = "grid/reconstruction",
    ) -> None:
        if every_n_steps < 0 or num_images < 1:
            raise ValueError("every_n_steps must be >= 0 and num_images >= 1")
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.use_ema = use_ema
        self.tag = tag
        self._images: torch.Tensor | None = None
        self._last_step = -1

    def _fixed_batch(self, trainer: Trainer, fallback: Any) -> torch.Tensor:
        if self._images is None:
            batch = None
            loaders = trainer.val_dataloaders
            if loaders is not None:
                loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
                batch = next(iter(loader))
            batch = batch if batch is not None else fallback
            images = batch["image"] if isinstance(batch, dict) else batch
            self._images = images[: self.num_images].detach().cpu()
        return self._images

    @torch.no_grad()
    def log_grid(self, trainer: Trainer, pl_module: LightningModule, fallback: Any = None) -> torch.Tensor | None:
        images = self._fixed_batch(trainer, fallback).to(pl_module.device)
        images01 = uint8_to_unit(images) if images.dtype == torch.uint8 else images.float()
        gen = torch.Generator(device=pl_module.device).manual_seed(0)
        ema = find_ema(trainer) if self.use_ema else None
        swap = ema is not None and not ema.swapped
        was_training = pl_module.training
        pl_module.eval()
        try:
            if swap:
                ema.swap_in()
            out = pl_module.reconstruct(images01, generator=gen, return_multiscale=True)
        finally:
            if swap:
                ema.swap_out()
            pl_module.train(was_training)
        grid = reconstruction_grid(images, out.image, out.multiscale)
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        if experiment is not None and hasattr(experiment, "add_image") and trainer.is_global_zero:
            experiment.add_image(self.tag, grid, global_step=trainer.global_step)
        return grid

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step != self._last_step and step % self.every_n_steps == 0:
            self._last_step = step
            self.log_grid(trainer, pl_module, fallback=batch)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._images is not None and trainer.global_step != self._last_step:
            self.log_grid(trainer, pl_module)
