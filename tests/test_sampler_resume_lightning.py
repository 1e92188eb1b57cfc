"""A small Lightning fit with EMACallback + SamplerStateCallback, stopped mid-epoch and resumed,
must reproduce an uninterrupted run exactly (weights, optimiser state, EMA, sample order).

Uses lightning 2.6's own behaviour on resume (see callbacks/sampler_state.py): without the
sampler callback the resumed run would re-train the *first* batches of the epoch.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import cpu_trainer
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.atomic_checkpoint import AtomicCheckpointIO
from callbacks.ema import EMACallback
from callbacks.sampler_state import SamplerStateCallback
from datamodules.samplers import ResumableDistributedSampler

N_SAMPLES, BATCH = 22, 4  # 6 batches per epoch, the last one partial (2 samples)


class IndexedData(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N_SAMPLES, 3, generator=g)
        self.y = torch.randn(N_SAMPLES, 1, generator=g)

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Tiny(LightningModule):
    def __init__(self, num_workers: int = 0) -> None:
        super().__init__()
        self.num_workers = num_workers
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.frozen = nn.Linear(3, 1).requires_grad_(False)  # stands in for a frozen VFM
        self.seen: list[list[int]] = []
        self.val_weight: torch.Tensor | None = None

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        self.seen.append(idx.tolist())
        return nn.functional.mse_loss(self.net(x) + 0 * self.frozen(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_weight = self.net.weight.detach().clone()
        x, y, _ = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        sampler = ResumableDistributedSampler(IndexedData(), num_replicas=1, rank=0, shuffle=True, seed=3)
        return DataLoader(sampler.dataset, batch_size=BATCH, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(IndexedData(), batch_size=8)


def _trainer(tmp_path, max_steps, ckpt_cb=None):
    callbacks = [EMACallback(["net"], preset="debug"), SamplerStateCallback()]
    if ckpt_cb is not None:
        callbacks.append(ckpt_cb)
    return cpu_trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        max_epochs=-1,
        precision="32-true",
        enable_checkpointing=True,
        limit_val_batches=1,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def _ema(trainer: Trainer) -> dict[str, torch.Tensor]:
    cb = next(c for c in trainer.callbacks if isinstance(c, EMACallback))
    return cb.ema.state_dict()["params"]


TOTAL_STEPS = 12  # two epochs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run that also writes a checkpoint after every step."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    model_a = Tiny()
    trainer_a = _trainer(tmp_path / "a", TOTAL_STEPS, ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer_a.fit(model_a)
    assert trainer_a.global_step == TOTAL_STEPS
    return tmp_path / "ck", model_a, trainer_a


@pytest.mark.parametrize(
    "resume_step,num_workers",
    [
        (3, 0),  # mid-epoch 0
        (6, 0),  # end of epoch 0
        (8, 0),  # mid-epoch 1
        # Worker processes make the DataLoader pull indices from the sampler as soon as the
        # iterator exists (before any hook of the resumed run): the case the re-iteration is for.
        pytest.param(8, 1, marks=pytest.mark.slow),
    ],
)
def test_resume_matches_uninterrupted(tmp_path, uninterrupted, resume_step, num_workers):
    ckpt_dir, model_a, trainer_a = uninterrupted
    total = TOTAL_STEPS
    seen_a = model_a.seen
    model_b = Tiny(num_workers)
    trainer_b = _trainer(tmp_path / "b", total)
    path = next(ckpt_dir.glob(f"step={resume_step}*.ckpt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning warns that the DataLoader itself is not resumable
        trainer_b.fit(model_b, ckpt_path=path)
    assert trainer_b.global_step == total
    # The resumed run trains exactly on the batches the uninterrupted one trained on after step k.
    assert model_b.seen == seen_a[resume_step:]
    # Each epoch is a permutation of the dataset (nothing skipped or repeated).
    per_epoch = 6
    for e in range(2):
        flat = sorted(i for b in seen_a[e * per_epoch : (e + 1) * per_epoch] for i in b)
        assert flat == list(range(N_SAMPLES))
    for (n, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(pa, pb), n
    ema_a, ema_b = _ema(trainer_a), _ema(trainer_b)
    assert ema_a.keys() == {"net.weight", "net.bias"}  # the frozen layer is not averaged
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    opt_a = trainer_a.optimizers[0].state_dict()["state"]
    opt_b = trainer_b.optimizers[0].state_dict()["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])
    # Validation ran with the EMA weights swapped in, and the raw weights came back afterwards.
    assert torch.equal(model_b.val_weight, ema_b["net.weight"])
    assert not torch.equal(model_b.net.weight, ema_b["net.weight"])


def test_without_sampler_callback_lightning_replays_epoch_start(tmp_path):
    """Pins the Lightning behaviour the sampler callback exists for (if this starts failing,
    Lightning learned to skip batches itself and the callback's re-iteration must be revisited)."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    model_a = Tiny()
    trainer_a = cpu_trainer(
        default_root_dir=tmp_path / "a", max_steps=6, limit_val_batches=0, enable_checkpointing=True, callbacks=[ckpt]
    )
    trainer_a.fit(model_a)
    model_b = Tiny()
    trainer_b = cpu_trainer(default_root_dir=tmp_path / "b", max_steps=6, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer_b.fit(model_b, ckpt_path=next((tmp_path / "ck").glob("step=2*.ckpt")))
    assert model_b.seen == model_a.seen[:4]  # the first 4 batches again, not batches 3..6
