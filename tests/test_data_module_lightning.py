"""ImageNetDataModule inside a real Lightning Trainer (single process, CPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import cpu_trainer
from test_data_helpers import SYNSETS, make_datamodule, make_samples, write_imagefolder, write_shards

from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule


class Recorder(L.LightningModule):
    """Records what each training step receives; trains one scalar so the optimiser has work."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, int, list[str], torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        assert set(batch) == {"image", "label", "key"}, set(batch)
        assert batch["image"].dtype == torch.uint8 and batch["label"].dtype == torch.int64
        dataset_epoch = self.trainer.train_dataloader.dataset.epoch
        self.seen.append((self.current_epoch, dataset_epoch, list(batch["key"]), batch["image"].clone()))
        return (self.w - batch["image"].float().mean() / 255) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(**kw) -> L.Trainer:
    return cpu_trainer(use_distributed_sampler=False, **kw)


def test_imagefolder_epochs_in_trainer(tmp_path):
    samples = make_samples(per_class=2, sizes=[(20, 16)])
    write_imagefolder(tmp_path / "train", samples)
    (tmp_path / "train" / SYNSETS[0] / "corrupt.JPEG").write_bytes(b"broken")
    dm = make_datamodule(
        tmp_path, resolution=8, batch_size=2, shuffle_train=True, max_bad_fraction=0.5, min_seen_for_bad_check=1
    )
    model = Recorder()
    trainer(max_epochs=2).fit(model, datamodule=dm)
    for epoch in (0, 1):
        rows = [r for r in model.seen if r[0] == epoch]
        assert all(r[1] == epoch for r in rows)  # crops are drawn for the trainer's epoch
        keys = [k for r in rows for k in r[2]]
        assert sorted(keys) == sorted(s["key"] for s in samples)
    # tokenizer_train draws new crops in the new epoch.
    e0 = {k: img for r in model.seen if r[0] == 0 for k, img in zip(r[2], r[3])}
    e1 = {k: img for r in model.seen if r[0] == 1 for k, img in zip(r[2], r[3])}
    assert any(not torch.equal(e0[k], e1[k]) for k in e0)
    assert dm.bad_images.num_bad == 2  # the corrupt file, once per epoch
    assert dm.state_dict()["bad_images"] == {"num_seen": 2 * (len(samples) + 1), "num_bad": 2}


def test_webdataset_stream_with_max_steps_and_resume_state(tmp_path):
    samples = make_samples(per_class=3, sizes=[(12, 12)])
    write_shards(tmp_path, samples, num_shards=2)
    dm = make_datamodule(
        tmp_path,
        source="webdataset",
        resolution=8,
        batch_size=2,
        shuffle_train=True,
        drop_last_train=True,
        shuffle_buffer=3,
    )
    cfg = dm.config
    model = Recorder()
    trainer(max_steps=7).fit(model, datamodule=dm)  # infinite stream: more steps than one pass
    assert len(model.seen) == 7
    state = dm.state_dict()
    assert state["train_epoch"] == 1
    resumed = ImageNetDataModule(cfg)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    assert resumed.train_dataloader().next_epoch == 1


def test_distributed_sampler_injection_is_refused(tmp_path):
    write_imagefolder(tmp_path / "train", make_samples(per_class=1))
    dm = ImageNetDataModule(ImageNetDataConfig(root=str(tmp_path), val_split=None, num_workers=0, pin_memory=False))

    class FakeConnector:
        use_distributed_sampler = True

    class FakeTrainer:
        world_size, global_rank = 2, 0
        _accelerator_connector = FakeConnector()

    dm.trainer = FakeTrainer()
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.train_dataloader()
