"""Embedded demo dataset: real wheel photographs, deterministic, labelled, ImageFolder round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.decoding import decode_rgb
from datamodules.demo_data import (
    DEMO_CLASSES,
    DemoDataConfig,
    DemoPhotoDataset,
    demo_sample,
    load_photo,
    write_demo_imagefolder,
)
from datamodules.imagefolder import ImageFolderSource
from datamodules.imagenet import ImageNetDataModule, data_preset


def test_at_least_ten_real_photographs():
    assert len(DEMO_CLASSES) >= 10 and list(DEMO_CLASSES) == sorted(DEMO_CLASSES)
    import skimage.data
    from sklearn.datasets import load_sample_image

    # Independent loads of two of them: the demo classes are the packaged photographs themselves.
    np.testing.assert_array_equal(load_photo("coffee"), skimage.data.coffee())
    np.testing.assert_array_equal(load_photo("china"), load_sample_image("china.jpg"))
    for name in DEMO_CLASSES:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 256


def test_deterministic_and_labelled():
    cfg = DemoDataConfig(resolution=24, num_per_class=2, seed=4)
    a, b = DemoPhotoDataset(cfg), DemoPhotoDataset(cfg)
    assert len(a) == 2 * len(DEMO_CLASSES)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["key"] == y["key"]
        assert x["image"].dtype == torch.uint8 and x["image"].shape == (3, 24, 24)
        assert x["label"] == i % len(DEMO_CLASSES) and DEMO_CLASSES[x["label"]] in x["key"]
    other = DemoPhotoDataset(DemoDataConfig(resolution=24, num_per_class=2, seed=5))
    assert not torch.equal(a[0]["image"], other[0]["image"])


def test_sample_is_a_crop_of_its_photograph():
    # With full-size crops at the photo's own resolution the resize is the identity, so the sample
    # must equal a window of the photograph (offset only along the long side).
    photo = load_photo("chelsea")  # 300 x 451
    cfg = DemoDataConfig(resolution=300, num_per_class=1, min_crop_fraction=1.0, seed=0)
    index = DEMO_CLASSES.index("chelsea")
    image, label, _ = demo_sample(index, cfg)
    assert label == index
    assert any(np.array_equal(image, photo[:, x : x + 300]) for x in range(451 - 300 + 1))


def test_imagefolder_round_trip(tmp_path):
    cfg = DemoDataConfig(resolution=20, num_per_class=2, seed=1)
    assert write_demo_imagefolder(tmp_path / "demo", cfg) == 2 * len(DEMO_CLASSES)
    assert write_demo_imagefolder(tmp_path / "demo", cfg) == 0  # same manifest: left alone
    with pytest.raises(FileExistsError, match="another config"):
        write_demo_imagefolder(tmp_path / "demo", DemoDataConfig(resolution=21, num_per_class=2))
    source = ImageFolderSource(tmp_path / "demo")
    assert source.classes == list(DEMO_CLASSES)
    direct = {item["key"]: item for item in DemoPhotoDataset(cfg)}
    assert sorted(source.keys) == sorted(direct)
    for i in range(len(source)):
        record = source[i]
        ref = direct[record.key]
        assert record.label == ref["label"]
        np.testing.assert_array_equal(np.asarray(decode_rgb(record.data)), ref["image"].permute(1, 2, 0).numpy())


def test_refuses_to_overwrite_other_data(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="non-empty"):
        write_demo_imagefolder(tmp_path / "x")


def test_debug_preset_end_to_end(tmp_path):
    dm = ImageNetDataModule(data_preset("debug", root=str(tmp_path / "demo")))
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert dm.classes == list(DEMO_CLASSES)
    val = [dm.on_before_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert sum(len(b["key"]) for b in val) == 2 * len(DEMO_CLASSES)
    train_keys = {k for b in dm.train_dataloader() for k in b["key"]}
    assert train_keys.isdisjoint(k for b in val for k in b["key"])  # the two splits are different crops


def test_command_line_writer(tmp_path, capsys):
    from datamodules.demo_data import main

    main([str(tmp_path / "d"), "--resolution", "16", "--num-per-class", "1"])
    assert f"wrote {len(DEMO_CLASSES)} images" in capsys.readouterr().out
    assert len(ImageFolderSource(tmp_path / "d")) == len(DEMO_CLASSES)
