"""A latent cache is checked when read: its statistics, its shards' sizes, checksums and values, its labels."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule
from datamodules.latent_cache import LatentCacheDataModule, finalize_cache
from datamodules.latent_dataset import LatentDataset
from datamodules.latent_shards import MANIFEST, STATS, shard_name, write_shard
from vfmvae.provenance import state_dict_sha256

LATENT = (8, 4, 4)


def make_cache(root: Path, n: int = 10, shard_size: int = 4, seed: int = 0, num_classes: int = 10) -> Path:
    """A finished cache of ``n`` images in 3 shards, written by the production shard writer and finaliser."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "images" / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"k{i:03d}.png")
    dm = LatentCacheDataModule(str(root / "images"), str(root / "cache"), image_size=8, shard_size=shard_size)
    dm.setup()
    g = torch.Generator().manual_seed(seed)
    for k in range(dm.num_shards):
        records = [dm.source[i] for i in range(k * shard_size, k * shard_size + dm.shard_size_of(k))]
        m = len(records)
        tensors = {name: torch.randn(m, *LATENT, generator=g) + seed for name in ("mean", "mean_flip")}
        tensors |= {name: torch.full((m, *LATENT), -2.0) for name in ("logvar", "logvar_flip")}
        tensors["label"] = torch.tensor([r.label for r in records])
        # The tokenizer hash in each shard's header, as `LatentShardWriter` records it.
        write_shard(
            dm.out_dir, k, tensors, [r.key for r in records], metadata={"tokenizer_sha256": f"tokenizer-{seed}"}
        )
    provenance = {"tokenizer": {"weights_sha256": f"tokenizer-{seed}"}, "num_classes": num_classes}
    finalize_cache(dm, store_images=False, stats_samples=100, seed=0, provenance=provenance)
    return dm.out_dir


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    return make_cache(root / "a", seed=0), make_cache(root / "b", seed=1)


@pytest.fixture
def cache(two_caches, tmp_path):
    """A private copy of cache A (tests below damage it)."""
    return Path(shutil.copytree(two_caches[0], tmp_path / "cache"))


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _hash(path: Path) -> str:
    stats = torch.load(path, weights_only=True)
    return state_dict_sha256({k: stats[k].float().reshape(1, -1, 1, 1) for k in ("mean", "std")})


# ------------------------------------------------------------------------------------------ statistics
def test_manifest_records_the_hash_of_its_statistics(two_caches):
    a, b = two_caches
    assert _manifest(a)["latent_stats"] == {"file": STATS, "sha256": _hash(a / STATS)}
    assert _manifest(a)["latent_stats"]["sha256"] != _manifest(b)["latent_stats"]["sha256"]


def test_statistics_of_another_cache_are_refused_by_the_dataset_and_the_datamodule(two_caches):
    a, b = two_caches
    LatentDataset(a, stats_path=a / STATS)  # its own file: fine
    with pytest.raises(ValueError) as info:
        LatentDataset(a, stats_path=b / STATS)
    line = str(info.value)
    assert "\n" not in line
    assert f"latent statistics {b / STATS} (sha256 {_hash(b / STATS)[:12]})" in line
    assert f"{a / MANIFEST} (sha256 {_hash(a / STATS)[:12]})" in line
    assert "remove latent_stats_path" in line
    config = ImageNetDataConfig(mode="latents", latent_root=str(a), latent_stats_path=str(b / STATS), val_split=None)
    with pytest.raises(ValueError, match="come from another latent cache"):
        ImageNetDataModule(config).setup("fit")


def test_old_cache_without_the_hash_warns_once_and_keeps_working(cache, caplog):
    manifest = _manifest(cache)
    del manifest["latent_stats"]
    (cache / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        first = LatentDataset(cache)
        LatentDataset(cache)
    warnings = [r.getMessage() for r in caplog.records if "records no hash of its latent statistics" in r.getMessage()]
    assert len(warnings) == 1 and str(cache / MANIFEST) in warnings[0]
    assert torch.isfinite(first[0]["latent"]).all()


# ------------------------------------------------------------------------------------------ shards
def test_truncated_shard_is_named_when_the_dataset_is_built(cache):
    path = cache / shard_name(1)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError) as info:
        LatentDataset(cache)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"latent cache shard {path}: truncated")


def test_missing_shard_is_named_when_the_dataset_is_built(cache):
    (cache / shard_name(2)).unlink()
    with pytest.raises(ValueError, match=f"latent cache shard {cache / shard_name(2)}: missing"):
        LatentDataset(cache)


def _rewrite_shard(root: Path, index: int, edit) -> None:
    """Rewrite shard ``index`` through the shard writer after ``edit(tensors)``; the manifest gets its checksum."""
    from safetensors.torch import load_file

    manifest = _manifest(root)
    entry = next(s for s in manifest["shards"] if s["index"] == index)
    tensors = load_file(str(root / shard_name(index)))
    edit(tensors)
    entry["sha256"] = write_shard(root, index, tensors, entry["keys"]).sha256
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_non_finite_latent_is_an_error_naming_shard_row_and_key(cache):
    def poison(tensors):
        tensors["mean"][1, 0, 0, 0] = float("nan")
        tensors["mean_flip"][1, 0, 0, 0] = float("inf")

    _rewrite_shard(cache, 1, poison)
    ds = LatentDataset(cache)  # sizes are fine: construction passes
    key = _manifest(cache)["shards"][1]["keys"][1]
    with pytest.raises(ValueError, match=f"shard {cache / shard_name(1)} row 1 \\(key {key}\\): non-finite"):
        ds[5]
    ds[4]  # its neighbours are fine
    with pytest.raises(ValueError, match=f"{shard_name(1)}: non-finite values in 'mean'.*rows \\[1\\]"):
        LatentDataset(cache, verify=True)


def test_verify_checks_the_manifest_checksums(cache):
    path = cache / shard_name(0)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes: only the checksum can tell
    path.write_bytes(bytes(data))
    LatentDataset(cache)  # not verified by default (reading every byte of a large cache takes minutes)
    with pytest.raises(ValueError, match=f"latent cache shard {path}: sha256 .* differs from the manifest's"):
        LatentDataset(cache, verify=True)
    config = ImageNetDataConfig(mode="latents", latent_root=str(cache), latent_verify=True, val_split=None)
    with pytest.raises(ValueError, match="differs from the manifest's"):
        ImageNetDataModule(config).setup("fit")


# ------------------------------------------------------------------------------------------ labels
def test_labels_beyond_the_network_or_the_null_class_are_refused(cache):
    ds = LatentDataset(cache)
    ds.check_labels(num_classes=10, null_id=10)
    with pytest.raises(ValueError, match=r"records 10 classes, but the network has num_classes=2"):
        ds.check_labels(num_classes=2, null_id=2)

    def relabel(tensors):  # a label the manifest's 10 classes do not account for: the null class of 10
        tensors["label"][0] = 10

    _rewrite_shard(cache, 2, relabel)
    with pytest.raises(ValueError, match=r"labels up to 10, beyond .*; the null class \(id 10,"):
        LatentDataset(cache).check_labels(num_classes=10, null_id=10)


def test_training_refuses_a_cache_with_more_classes_than_the_network(cache):
    from lightning.pytorch import Trainer
    from test_diffusion_helpers import tiny_module

    module = tiny_module("lightningdit", network_overrides={"input_size": 4, "num_classes": 2})
    config = ImageNetDataConfig(mode="latents", latent_root=str(cache), val_split=None, batch_size=4, num_workers=0)
    trainer = Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match="records 10 classes, but the network has num_classes=2"):
        trainer.fit(module, datamodule=ImageNetDataModule(config))
    assert trainer.global_step == 0


class BlackIsNaN(torch.nn.Module):
    """A stand-in f8 encoder whose moments are infinite for an all-black image (log of its zero brightness)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 8, stride=8)

    def encode(self, images_01):
        from vfmvae.tokenizer.posterior import DiagonalGaussian

        brightness = images_01.mean(dim=(1, 2, 3)).log().view(-1, 1, 1, 1)
        return DiagonalGaussian(self.conv(images_01) + brightness)


def test_cache_writer_records_an_image_with_non_finite_moments_as_bad(tmp_path):
    """Otherwise the shard is written with NaNs, and caching again (the fix for a bad shard) writes them again."""
    from lightning_modules.latent_cache import LatentShardWriter, cache_latents

    rng = np.random.default_rng(0)
    for i in range(4):
        folder = tmp_path / "images" / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(1, 256, (8, 8, 3), dtype=np.uint8) if i != 2 else np.zeros((8, 8, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"k{i:03d}.png")
    data = LatentCacheDataModule(str(tmp_path / "images"), str(tmp_path / "cache"), image_size=8, shard_size=2)
    writer = LatentShardWriter(provenance={"tokenizer": {"weights_sha256": "t"}, "num_classes": 2})
    cache_latents(BlackIsNaN(), data, writer, accelerator="cpu", devices=1, enable_progress_bar=False)
    manifest = _manifest(tmp_path / "cache")
    assert manifest["num_written"] == 3 and [b["key"] for b in manifest["bad"]] == ["k002"]
    assert "non-finite" in manifest["bad"][0]["reason"]
    from datamodules.latent_shards import read_header

    assert read_header(tmp_path / "cache" / shard_name(1))[2] == {"index": 1, "tokenizer_sha256": "t"}
    ds = LatentDataset(tmp_path / "cache", verify=True)
    assert sorted(ds[i]["key"] for i in range(len(ds))) == ["k000", "k001", "k003"]


def test_a_swapped_shard_or_one_from_another_cache_is_refused_by_its_header(cache, two_caches):
    a, b = cache / shard_name(0), cache / shard_name(1)  # both hold 4 rows: same sizes, same shapes
    a.rename(cache / "x")
    b.rename(a)
    (cache / "x").rename(b)
    with pytest.raises(ValueError, match=f"latent cache shard {a}: holds the rows of shard 1, not 0"):
        LatentDataset(cache)
    b.rename(cache / "x")
    a.rename(b)
    shutil.copy(two_caches[1] / shard_name(0), a)  # the same images encoded by another tokenizer
    with pytest.raises(ValueError, match=f"{a}: written by tokenizer tokenizer-1, the manifest's is tokenizer-0"):
        LatentDataset(cache)


def test_a_damaged_manifest_or_statistics_file_is_named(cache, two_caches):
    manifest = _manifest(cache)
    (cache / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match=f"{cache / MANIFEST}: not a readable manifest"):
        LatentDataset(cache)
    del manifest["latent_shape"]
    (cache / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"{cache / MANIFEST}: no 'latent_shape' entry"):
        LatentDataset(cache)
    other = cache / "other.pt"
    for mean, std, message in [
        (torch.zeros(8), torch.tensor([1.0] * 7 + [0.0]), "latent std must be positive"),
        (torch.tensor([float("nan")] * 8), torch.ones(8), "latent statistics must be finite"),
        (torch.zeros(4), torch.ones(4), "statistics have 4 channels, the cache 8"),
    ]:
        torch.save({"mean": mean.view(1, -1, 1, 1), "std": std.view(1, -1, 1, 1)}, other)
        with pytest.raises(ValueError, match=f"{other}: {message}"):
            LatentDataset(two_caches[0], stats_path=other)


def test_verify_on_a_manifest_without_checksums_says_so(cache, caplog):
    manifest = _manifest(cache)
    for shard in manifest["shards"]:
        del shard["sha256"]
    (cache / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        LatentDataset(cache, verify=True)
    assert [r.getMessage() for r in caplog.records if "records no checksum" in r.getMessage()] == [
        f"{cache / MANIFEST} records no checksum for shard 0 (and maybe others): their bytes cannot be verified, "
        "only their values; run cache-latents again to record them"
    ]


def test_a_held_out_cache_is_normalised_and_checked_against_the_training_cache(two_caches):
    a, b = two_caches
    train_stats = torch.load(a / STATS, weights_only=True)
    config = ImageNetDataConfig(mode="latents", latent_root=str(a), latent_val_root=str(a), val_split="val")
    dm = ImageNetDataModule(config)
    dm.setup("fit")
    assert torch.equal(dm._splits["val"].dataset.normalizer.mean, train_stats["mean"])
    config = ImageNetDataConfig(mode="latents", latent_root=str(a), latent_val_root=str(b), val_split="val")
    with pytest.raises(ValueError, match=f"latent cache {b} was made by tokenizer tokenizer-1, but .* tokenizer-0"):
        ImageNetDataModule(config).setup("fit")
