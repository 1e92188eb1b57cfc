"""WebDataset path on generated ``timm/imagenet-1k-wds``-style shards (written by webdataset itself)."""

from __future__ import annotations

import io
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_helpers import SYNSETS, make_datamodule, make_samples, write_imagefolder, write_shards
from torch.utils.data import DataLoader

from datamodules.crops import adm_center_crop
from datamodules.decoding import BadImageTracker
from datamodules.image_mode import ImageTransform, StreamedImages, collate_images
from datamodules.imagenet import ImageNetDataModule
from datamodules.webdataset_shards import WebDatasetSource, list_shards


def make_dm(root, **kw) -> ImageNetDataModule:
    defaults = {"source": "webdataset", "train_crop": "adm_center", "batch_size": 4, "infinite_train": False}
    return make_datamodule(root, **{**defaults, **kw})


def keys_of(dm: ImageNetDataModule, loader) -> list[str]:
    return [k for b in loader for k in dm.on_before_batch_transfer(b, 0)["key"]]


def test_labels_keys_and_pixels(tmp_path):
    samples = make_samples(per_class=3)
    for s in samples:
        s["bytes"] = write_imagefolder(tmp_path / "unused", [s])[s["key"]]
    write_shards(tmp_path / "wds", samples, num_shards=2)
    dm = make_dm(tmp_path / "wds")
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]
    assert set(batches[0]) == {"image", "label", "key"}
    assert batches[0]["image"].dtype == torch.uint8 and batches[0]["image"].shape[1:] == (3, 16, 16)
    by_key = {s["key"]: s for s in samples}
    seen = []
    for b in batches:
        for img, label, key in zip(b["image"], b["label"].tolist(), b["key"]):
            seen.append(key)
            assert label == by_key[key]["label"]
            ref = adm_center_crop(Image.open(io.BytesIO(by_key[key]["bytes"])).convert("RGB"), 16)
            np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), ref)
    assert sorted(seen) == sorted(by_key)


def test_imagefolder_class_order_equals_wds_cls(tmp_path):
    # Shards carry cls = index of the synset in sorted order (timm/imagenet-1k-wds); the ImageFolder
    # tree of the same synsets (written in reverse order on disk) must give the same id to each key.
    samples = make_samples(per_class=2)
    write_shards(tmp_path / "wds", samples, num_shards=1)
    write_imagefolder(tmp_path / "if" / "train", list(reversed(samples)))
    wds_dm = make_dm(tmp_path / "wds")
    if_dm = make_dm(tmp_path / "if", source="imagefolder")
    wds_labels = {k: y for b in wds_dm.train_dataloader() for k, y in zip(b["key"], b["label"].tolist())}
    if_labels = {k: y for b in if_dm.train_dataloader() for k, y in zip(b["key"], b["label"].tolist())}
    assert wds_labels == if_labels and len(if_labels) == len(samples)
    assert if_dm.classes == SYNSETS


@pytest.mark.parametrize("num_shards", [8, 3, 1])
def test_ranks_and_workers_partition_the_keys(tmp_path, num_shards):
    samples = make_samples(per_class=5, sizes=[(8, 8)])
    shards = write_shards(tmp_path, samples, num_shards=num_shards)
    keep = frozenset(s["key"] for s in samples[1:])  # a filter too
    seen = Counter()
    for rank in range(2):
        src = WebDatasetSource(
            [str(p) for p in shards], keep_keys=keep, shuffle=True, shuffle_buffer=4, seed=3, rank=rank, world_size=2
        )
        for worker in range(2):
            seen.update(r.key for r in src.iter_records(epoch=1, worker=worker, num_workers=2))
    assert set(seen) == keep and set(seen.values()) == {1}


def test_two_ranks_two_worker_processes_see_every_key_once(tmp_path):
    samples = make_samples(per_class=6, sizes=[(12, 10)])
    write_shards(tmp_path, samples, num_shards=4)
    seen = Counter()
    for rank in range(2):
        src = WebDatasetSource(list_shards(tmp_path, "train"), shuffle=True, seed=0, rank=rank, world_size=2)
        ds = StreamedImages(src, ImageTransform("tokenizer_train", 8), BadImageTracker())
        loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_images)
        for batch in loader:
            assert batch["image"].shape[1:] == (3, 8, 8)
            seen.update(batch["key"])
    assert sorted(seen) == sorted(s["key"] for s in samples) and set(seen.values()) == {1}


def test_epochs_reshuffle_and_infinite_streams_cycle(tmp_path):
    samples = make_samples(per_class=4, sizes=[(8, 8)])
    shards = [str(p) for p in write_shards(tmp_path, samples, num_shards=3)]
    src = WebDatasetSource(shards, shuffle=True, shuffle_buffer=5, seed=1)
    e0 = [r.key for r in src.iter_records(epoch=0)]
    e0_again = [r.key for r in src.iter_records(epoch=0)]
    e1 = [r.key for r in src.iter_records(epoch=1)]
    assert e0 == e0_again and sorted(e0) == sorted(e1) and e0 != e1
    inf = WebDatasetSource(shards, infinite=True)
    it = inf.iter_records()
    first = [next(it).key for _ in range(2 * len(samples))]
    assert Counter(first) == Counter({s["key"]: 2 for s in samples})


def test_corrupt_image_and_truncated_shard_are_skipped(tmp_path, caplog):
    samples = make_samples(per_class=3, sizes=[(10, 10)])
    samples[4]["bytes"] = b"\xff\xd8\xff garbage"
    shards = write_shards(tmp_path, samples, num_shards=2)
    # Truncate the second shard inside a member (not on a 512-byte block boundary, where tar would just
    # look finished): the error is logged with the shard name and the first shard is still read.
    raw = shards[1].read_bytes()
    shards[1].write_bytes(raw[: len(raw) // 2 + 100])
    dm = make_dm(tmp_path, max_bad_fraction=0.5, min_seen_for_bad_check=1)
    with caplog.at_level(logging.WARNING):
        keys = keys_of(dm, dm.train_dataloader())
    shard0 = [s["key"] for s in samples[0::2]]
    assert samples[4]["key"] in shard0
    assert set(shard0) - {samples[4]["key"]} <= set(keys) and len(keys) == len(set(keys))
    assert samples[4]["key"] not in keys and samples[4]["key"] in dm.bad_images.bad_keys
    assert samples[4]["key"] in caplog.text and "unreadable shard" in caplog.text and shards[1].name in caplog.text


def test_missing_shards_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match=r"no WebDataset shards matching '\*-validation-\*.tar'"):
        list_shards(tmp_path, "validation")


def test_filter_that_removes_everything_is_an_error(tmp_path):
    samples = make_samples(per_class=2, sizes=[(8, 8)])
    shards = [str(p) for p in write_shards(tmp_path, samples, num_shards=2)]
    src = WebDatasetSource(shards, keep_keys=frozenset({"not_in_this_split"}))
    with pytest.raises(ValueError, match="key filter removed all 6 samples"):
        list(src.iter_records())
    empty = tmp_path / "empty"
    write_shards(empty, [], num_shards=1)
    with pytest.raises(ValueError, match="hold no samples"):
        list(WebDatasetSource(list_shards(empty, "train")).iter_records())
