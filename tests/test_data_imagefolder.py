"""ImageFolder path of ImageNetDataModule on generated trees: labels, keys, crops, bad input."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_helpers import SYNSETS, make_datamodule, make_samples, write_imagefolder
from torchvision import transforms

from datamodules.decoding import TooManyBadImagesError
from datamodules.imagefolder import ImageFolderSource
from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule, data_preset
from datamodules.key_filter import save_key_list


def make_dm(root, **kw) -> ImageNetDataModule:
    return make_datamodule(root, **{"train_crop": "resize_center", "batch_size": 5, **kw})


def all_batches(dm: ImageNetDataModule, loader) -> list[dict]:
    return [dm.on_before_batch_transfer(b, 0) for b in loader]


@pytest.fixture()
def tree(tmp_path):
    samples = make_samples(per_class=4)
    data = write_imagefolder(tmp_path / "train", samples)
    return tmp_path, samples, data


def test_labels_keys_and_pixels(tree):
    root, samples, data = tree
    dm = make_dm(root)
    dm.setup("fit")
    assert dm.classes == SYNSETS
    batches = all_batches(dm, dm.train_dataloader())
    assert set(batches[0]) == {"image", "label", "key"}
    b = batches[0]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (5, 3, 16, 16)
    assert b["label"].dtype == torch.int64
    expected = {s["key"]: s["label"] for s in samples}
    got = {}
    for b in batches:
        for img, label, key in zip(b["image"], b["label"].tolist(), b["key"]):
            got[key] = label
            # Independent reference: PIL decode + torchvision Resize/CenterCrop (the rFID transform).
            ref = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16)])(
                Image.open(io.BytesIO(data[key])).convert("RGB")
            )
            np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), np.array(ref))
    assert got == expected


def test_train_crop_is_random_but_reproducible(tree):
    root, _, _ = tree
    first = all_batches(dm := make_dm(root, train_crop="tokenizer_train"), dm.train_dataloader())
    again = all_batches(dm2 := make_dm(root, train_crop="tokenizer_train"), dm2.train_dataloader())
    for a, b in zip(first, again):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    # Next epoch: new crops for the same keys.
    dm.train_sampler.set_epoch(1)
    second = all_batches(dm, dm._train_loader)
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(first, second))


def test_shuffled_sampler_covers_each_key_once_per_epoch(tree):
    root, samples, _ = tree
    dm = make_dm(root, shuffle_train=True, batch_size=4)
    keys = [k for b in all_batches(dm, dm.train_dataloader()) for k in b["key"]]
    assert sorted(keys) == sorted(s["key"] for s in samples)
    assert keys != sorted(keys)


def test_corrupt_and_truncated_files_are_skipped_counted_and_logged(tree, caplog):
    root, samples, data = tree
    good = data[samples[0]["key"]]
    (root / "train" / SYNSETS[1] / "broken_garbage.JPEG").write_bytes(b"this is not an image")
    (root / "train" / SYNSETS[2] / "broken_truncated.JPEG").write_bytes(good[: len(good) // 2])
    dm = make_dm(root, max_bad_fraction=0.5, min_seen_for_bad_check=1)
    with caplog.at_level(logging.WARNING):
        batches = all_batches(dm, dm.train_dataloader())
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(s["key"] for s in samples)
    assert dm.bad_images.num_bad == 2 and dm.bad_images.num_seen == len(samples) + 2
    assert sorted(dm.bad_images.bad_keys) == ["broken_garbage", "broken_truncated"]
    assert "broken_garbage" in caplog.text and "broken_truncated" in caplog.text
    assert sum(len(b["key"]) for b in batches) == len(samples)


def test_too_many_bad_images_fail_with_a_clear_message(tree):
    root, _, _ = tree
    for i in range(3):
        (root / "train" / SYNSETS[0] / f"bad_{i}.JPEG").write_bytes(b"\x00" * 10)
    dm = make_dm(root, max_bad_fraction=0.1, min_seen_for_bad_check=5, shuffle_train=False)
    with pytest.raises(TooManyBadImagesError, match=r"could not be decoded.*max_bad_fraction=0.1"):
        all_batches(dm, dm.train_dataloader())


def test_missing_root_and_empty_split_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: .*nowhere"):
        ImageFolderSource(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolderSource(tmp_path / "empty")
    (tmp_path / "empty" / "n0").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no images .* under {tmp_path / 'empty'}"):
        ImageFolderSource(tmp_path / "empty")
    dm = make_dm(tmp_path / "missing_root")
    with pytest.raises(FileNotFoundError, match="missing_root"):
        dm.setup("fit")


def test_key_filter_keeps_listed_images_only(tree):
    root, samples, _ = tree
    keep = [s["key"] for s in samples[::3]]
    save_key_list(keep, root / "keep.txt")
    dm = make_dm(root, filter_keys_path=str(root / "keep.txt"))
    keys = [k for b in all_batches(dm, dm.train_dataloader()) for k in b["key"]]
    assert sorted(keys) == sorted(keep)
    save_key_list(["not_a_key"], root / "none.txt")
    with pytest.raises(ValueError, match="removed all .* empty split"):
        make_dm(root, filter_keys_path=str(root / "none.txt")).setup("fit")
    with pytest.raises(FileNotFoundError, match="filter key list not found"):
        make_dm(root, filter_keys_path=str(root / "absent.txt")).setup("fit")


def test_duplicate_keys_across_classes_are_rejected(tree):
    root, samples, data = tree
    (root / "train" / SYNSETS[1] / f"{samples[0]['key']}.png").write_bytes(data[samples[0]["key"]])
    with pytest.raises(ValueError, match="duplicate key"):
        ImageFolderSource(root / "train")


def test_workers_and_val_split(tree):
    root, samples, _ = tree
    write_imagefolder(root / "val", samples[:5])
    dm = make_dm(root, val_split="val", num_workers=2, val_crop="adm_center", batch_size=3)
    dm.setup("fit")
    keys = [k for b in all_batches(dm, dm.val_dataloader()) for k in b["key"]]
    assert sorted(keys) == sorted(s["key"] for s in samples[:5])


def test_config_errors_and_presets():
    with pytest.raises(ValueError, match="unknown data mode 'latent'"):
        ImageNetDataConfig(mode="latent")
    with pytest.raises(ValueError, match="unknown data source"):
        ImageNetDataConfig(source="lmdb")
    with pytest.raises(ValueError, match="unknown data preset"):
        data_preset("imagenet-512")
    cfg = data_preset("imagenet-tokenizer")
    assert (cfg.train_crop, cfg.val_crop, cfg.resolution) == ("tokenizer_train", "resize_center", 256)
    assert data_preset("imagenet-adm").train_crop == "adm_center"
    assert data_preset("debug").demo is not None


def test_persistent_workers_see_the_new_epoch(tree):
    root, _, _ = tree
    kw = dict(train_crop="tokenizer_train", num_workers=1, batch_size=12)
    dm = make_dm(root, persistent_workers=True, **kw)
    loader = dm.train_dataloader()
    epoch0 = all_batches(dm, loader)[0]
    dm.train_sampler.set_epoch(1)
    epoch1 = all_batches(dm, loader)[0]  # same worker process, new epoch through shared memory
    fresh = make_dm(root, **kw)
    fresh.setup("fit")
    fresh.train_sampler.set_epoch(1)
    reference = all_batches(fresh, fresh.train_dataloader())[0]
    assert epoch1["key"] == reference["key"] and torch.equal(epoch1["image"], reference["image"])
    assert not torch.equal(epoch0["image"], epoch1["image"])
