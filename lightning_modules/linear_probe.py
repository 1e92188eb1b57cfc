"""The linear probe of tokenizer latents as a Lightning run (paper Table 1, "linear probe"; docs/analyses.md,
"Linear probe").

`LinearProbeModule` trains `vfmvae.probe.LinearProbe` (parameter-free BatchNorm + one linear layer on the flattened
posterior mean) on the training cache of `datamodules.latent_probe.LatentProbeDataModule` with a named protocol
(`vfmvae.probe.PROBE_PROTOCOLS`: optimiser, lr per 256 images, warm-up + half-cosine schedule set every iteration,
epochs, augmentation) and reports top-1 accuracy on the validation cache. The protocol owns the schedule: the
module sets the trainer's ``max_epochs`` and the DataModule's per-process batch (``global_batch_size / world``).

Validation counts correct predictions on every rank and sums them over the ranks, so top-1 is over the whole
split whatever the number of processes. The last validation's result is ``module.result`` and, with
``record_path``, a metric record (`vfmvae.metrics.record`, kind ``linear_probe``) written by rank 0.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from datamodules.batch_size import set_per_device_batch_size
from vfmvae.metrics.record import evaluation_record, write_record
from vfmvae.probe import LARS, LinearProbe, probe_protocol, warmup_cosine_lr

log = logging.getLogger(__name__)

__all__ = ["LinearProbeModule"]


class LinearProbeModule(LightningModule):
    """Args:
    protocol / protocol_overrides: a `vfmvae.probe.PROBE_PROTOCOLS` name and field overrides.
    global_batch_size: images per step over all processes (default: the protocol's).
    record_path: where rank 0 writes the metric record after the last validation (optional).
    """

    def __init__(
        self,
        protocol: str = "mae",
        protocol_overrides: dict[str, Any] | None = None,
        global_batch_size: int | None = None,
        record_path: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        overrides = dict(protocol_overrides or {})
        if global_batch_size is not None:
            overrides["global_batch_size"] = int(global_batch_size)
        self.protocol = probe_protocol(protocol, **overrides)
        self.hparams["global_batch_size"] = self.protocol.global_batch_size  # the CLI checks it splits evenly
        self.probe: LinearProbe | None = None
        self.result: dict[str, Any] | None = None
        self._correct = self._count = None
        self._t0 = time.time()

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "latent_shape"):
            raise ValueError("the linear probe needs datamodules.latent_probe.LatentProbeDataModule as its data")
        world, batch = self.trainer.world_size, self.protocol.global_batch_size
        if batch % world:
            raise ValueError(f"global_batch_size {batch} is not divisible by the world size {world}")
        set_per_device_batch_size(dm, batch // world, batch, world, "give the latent caches")
        if dm.augmentation is None:
            dm.augmentation = self.protocol.augmentation
        if stage == "fit":
            self.trainer.fit_loop.max_epochs = self.protocol.epochs  # the protocol owns the schedule
            every = self.trainer.check_val_every_n_epoch
            if every and self.protocol.epochs % every:
                log.info("linear probe: validating after the last epoch only (%d does not divide %d epochs)",
                         every, self.protocol.epochs)  # fmt: skip
                self.trainer.check_val_every_n_epoch = self.protocol.epochs
        if self.probe is None:
            c, h, w = dm.latent_shape
            self.probe = LinearProbe(c * h * w, dm.num_classes, self.protocol.normalization)
            self.latent_shape, self.num_classes = (c, h, w), dm.num_classes
            self.tokenizer_record = dict(dm.train_set.manifest.get("tokenizer", {}))

    def configure_optimizers(self):
        p = self.protocol
        if p.optimizer == "lars":
            return LARS(self.probe.parameters(), lr=0.0, weight_decay=p.weight_decay, momentum=p.momentum)
        return torch.optim.SGD(self.probe.parameters(), lr=0.0, momentum=p.momentum, weight_decay=p.weight_decay)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # MAE sets the lr every iteration from the fractional epoch.
        p = self.protocol
        epoch = self.current_epoch + batch_idx / max(self.trainer.num_training_batches, 1)
        lr = warmup_cosine_lr(epoch, p.peak_lr(), p.epochs, p.warmup_epochs, p.min_lr)
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = lr

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.probe(batch["latent"]), batch["label"])
        self.log("loss/cross_entropy", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().optimizer.param_groups[0]["lr"])
        return loss

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._correct = torch.zeros((), dtype=torch.long, device=self.device)
        self._count = torch.zeros((), dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.probe(batch["latent"]).argmax(1)
        self._correct += (pred == batch["label"]).sum()
        self._count += batch["label"].numel()

    def on_validation_epoch_end(self) -> None:
        correct = int(self.trainer.strategy.reduce(self._correct.clone(), reduce_op="sum"))
        count = int(self.trainer.strategy.reduce(self._count.clone(), reduce_op="sum"))
        if self.trainer.sanity_checking or count == 0:
            return
        top1 = 100.0 * correct / count
        self.log("metric/linear_probe_top1", top1, sync_dist=False, rank_zero_only=True)
        self.result = {"top1": top1, "correct": correct, "num_images": count, "epoch": self.current_epoch + 1}

    def on_fit_end(self) -> None:
        if self.result is None or self.result["epoch"] != self.protocol.epochs:
            log.warning("linear probe: no validation after the last epoch (set check_val_every_n_epoch to divide it)")
        if self.result is not None and self.hparams.record_path and self.trainer.is_global_zero:
            write_record(self.record(), self.hparams.record_path)

    def record(self) -> dict[str, Any]:
        """The metric record of the last validation (`vfmvae.metrics.record`)."""
        dm = self.trainer.datamodule
        return evaluation_record(
            "linear_probe",
            {"top1": self.result["top1"], "num_images": self.result["num_images"], "epochs": self.result["epoch"]},
            protocol={
                "follows": "MAE main_linprobe.py (BatchNorm without affine + linear head, LARS, warm-up + cosine)",
                **dataclasses.asdict(self.protocol),
                "features": "posterior mean, flattened",
                "world_size": self.trainer.world_size,
            },
            inputs={
                "train_latents": str(dm.train_root),
                "val_latents": str(dm.val_root),
                "latent_shape": list(self.latent_shape),
                "num_classes": self.num_classes,
                "tokenizer": self.tokenizer_record,
            },
            weights={},
            seconds=time.time() - self._t0,
        )
