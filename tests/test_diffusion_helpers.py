"""Shared helpers for the diffusion / alignment / sampling tests (no tests in this file).

A tiny in-memory latent DataModule shaped like the ImageNet DataModule's latents mode, and
builders for tiny `DiffusionModule`s matching the debug tokenizer (8x4x4 latents) and the
`debug-dinov2` VFM (hidden 64, patch 14, 4x4 tokens at 56 px).
"""

from __future__ import annotations

from typing import Any

import torch
from conftest import cpu_trainer
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from lightning_modules.diffusion import DiffusionModule
from vfmvae.codec import LatentNormalizer

LATENT = (8, 4, 4)


class TinyLatents(Dataset):
    """``n`` fixed latents with labels and 64 px uint8 images (a stand-in latent cache)."""

    def __init__(self, n: int = 8, seed: int = 0, nan_index: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(n, *LATENT, generator=g)
        if nan_index is not None:
            self.latents[nan_index, 0, 0, 0] = float("nan")
        self.images = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
        self.normalizer = LatentNormalizer(torch.zeros(LATENT[0]), torch.ones(LATENT[0]))
        self.manifest = {"tokenizer": {"weights_sha256": "test-tokenizer"}}
        self.root, self.policy = "memory", "test"

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"latent": self.latents[i], "label": i % 10, "image": self.images[i], "key": f"k{i}"}


class TinyLatentDataModule(LightningDataModule):
    def __init__(self, n: int = 8, batch_size: int = 4, shuffle: bool = False, nan_index: int | None = None):
        super().__init__()
        self.batch_size, self.shuffle = batch_size, shuffle
        self.dataset = TinyLatents(n, nan_index=nan_index)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, drop_last=True)


def tiny_module(network: str = "lightningdit", **kw) -> DiffusionModule:
    overrides = {"input_size": LATENT[1]}
    if network == "reg":
        overrides["z_dims"] = [64]  # debug-dinov2 width
    args = dict(network=network, preset="debug", network_overrides=overrides, transport=network, global_batch_size=4)
    args.update(kw)
    return DiffusionModule(**args)


class Recorder(Callback):
    """Per optimiser step: global step, time distribution, logged metrics and a weight snapshot."""

    def __init__(self):
        self.rows: list[dict[str, Any]] = []
        self.grad_norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.net.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append(
            {
                "step": trainer.global_step,
                "distribution": pl_module.last_time_distribution,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "aligned": "alignment" in batch,
                "weights": {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()},
            }
        )


def fit(module, datamodule, callbacks=(), max_steps: int = 2, ckpt_path=None, **trainer_kw) -> Trainer:
    trainer = cpu_trainer(max_steps=max_steps, callbacks=list(callbacks), **trainer_kw)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer
