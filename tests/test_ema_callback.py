"""EMACallback inside Lightning: one update per optimiser step (gradient accumulation), EMA
weights for validate(ckpt_path=...), raw weights in checkpoints written while swapped, modules named by the
LightningModule, and the same EMA for a consumer that runs before the callback."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.ema import EMACallback, find_ema
from vfmvae.utils.ema import EMA_PRESETS


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(2, 1)
        self.disc = nn.Linear(1, 1)  # a "discriminator": not passed to the EMA
        self.val_weight = None

    def training_step(self, batch, batch_idx):
        return (self.net(batch[0]) - 1).pow(2).mean() + 0 * self.disc.weight.sum()

    def validation_step(self, batch, batch_idx):
        self.val_weight = self.net.weight.detach().clone()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2, generator=torch.Generator().manual_seed(1))), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2, 2)), batch_size=2)


def _trainer(tmp_path, callbacks, **kw):
    return Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kw,
    )


def test_updates_once_per_optimizer_step_with_accumulation(tmp_path):
    cb = EMACallback(["net"], preset="debug")
    trainer = _trainer(tmp_path, [cb], max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Tiny())
    assert trainer.global_step == 2 and cb.ema.num_updates == 2
    assert cb.ema.nimg == 2 * 4  # global batch = 2 per micro-batch x 2 accumulated
    assert cb.ema.param_names == ["net.weight", "net.bias"]


def test_validate_from_checkpoint_uses_ema_weights(tmp_path):
    cb = EMACallback(["net"], preset="dit", decay=0.5)
    model = Tiny()
    trainer = _trainer(tmp_path, [cb], max_steps=3, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    path = tmp_path / "end.ckpt"
    trainer.save_checkpoint(path)
    ema_w = cb.ema.state_dict()["params"]["net.weight"]
    assert not torch.equal(ema_w, model.net.weight)
    fresh = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, [EMACallback(["net"], preset="dit", decay=0.5)]).validate(fresh, ckpt_path=path)
    assert torch.equal(fresh.val_weight, ema_w)
    assert torch.equal(fresh.net.weight, model.net.weight)  # raw weights back after validation


class SaveDuringValidation(Callback):
    def __init__(self, path) -> None:
        self.path = path

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs):
        trainer.save_checkpoint(self.path)


def test_checkpoint_written_while_swapped_holds_raw_weights(tmp_path):
    cb = EMACallback(["net"], preset="dit", decay=0.5)
    model = Tiny()
    path = tmp_path / "mid_val.ckpt"
    trainer = _trainer(tmp_path, [cb, SaveDuringValidation(path)], max_epochs=1, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    ckpt = torch.load(path, weights_only=False)
    assert torch.equal(ckpt["state_dict"]["net.weight"], model.net.weight)  # raw, not EMA
    assert torch.equal(ckpt["callbacks"][cb.state_key]["ema"]["params"]["net.weight"], model.val_weight)
    assert not torch.equal(model.val_weight, model.net.weight)


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="attribute"):
        EMACallback([])
    with pytest.raises(KeyError, match="preset"):
        EMACallback(["net"], preset="nope")
    cb = EMACallback(["missing"])
    with pytest.raises(AttributeError, match="missing"):
        cb._build(Tiny())


class TwoParts(Tiny):
    """A module that names what to average itself (as the tokenizer does: its stage's trainable modules)."""

    def ema_modules(self):
        return {"net": self.net}


class ReadsEmaFirst(Callback):
    """A consumer listed *before* the EMA callback: what it sees at each step end (as the probes read it)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(find_ema(trainer).num_updates)


def test_module_named_modules_current_ema_and_the_beta_tag(tmp_path):
    cb = EMACallback(preset="dit", decay=0.5)  # no attributes: TwoParts.ema_modules()
    reader = ReadsEmaFirst()
    trainer = _trainer(tmp_path, [reader, cb], max_steps=3, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TwoParts())
    assert cb.ema.param_names == ["net.weight", "net.bias"] and find_ema(trainer) is cb.ema
    assert reader.seen == [1, 2, 3]  # already updated for the step, although the reader runs first
    assert cb.ema.num_updates == 3  # and the callback's own hook did not update twice
    assert "train/ema_beta" in trainer.logged_metrics  # the TensorBoard naming rule (callbacks/tb_layout.py)
    with pytest.raises(AttributeError, match="ema_modules"):
        EMACallback()._build(Tiny())
    with pytest.raises(ValueError, match="either config"):
        EMACallback(config=EMA_PRESETS["dit"], decay=0.5)
