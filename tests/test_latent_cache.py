"""Latent cache: shards, resume, manifest, statistics and the latents-mode dataset
(docs/design.md, "Latent normalisation")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn

from datamodules.crops import adm_center_crop
from datamodules.latent_cache import LatentCacheDataModule
from datamodules.latent_dataset import LatentDataset, compute_latent_stats, fixed_posterior_sample
from datamodules.latent_shards import MANIFEST, STATS, ShardReader, shard_name, sidecar_name
from lightning_modules.latent_cache import LatentCacheModule, LatentShardWriter
from vfmvae.codec import LatentNormalizer, uint8_to_unit
from vfmvae.tokenizer.posterior import DiagonalGaussian

IMAGE_SIZE = 32


class StandInTokenizer(nn.Module):
    """A tiny f8 encoder with a 4-channel latent: enough to test the cache plumbing exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 8, stride=8)

    def encode(self, images_01: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.conv(images_01 * 2 - 1))


def make_folder(root, n_per_class=(5, 4, 4), corrupt: bool = True):
    rng = np.random.default_rng(0)
    for c, n in enumerate(n_per_class):
        d = root / f"n0000000{c}"
        d.mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(36, 80, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"c{c}_{i:03d}.png")
    if corrupt:
        (root / "n00000001" / "c1_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return root


def run_cache(data_root, out_dir, tokenizer, shard_size=4, writer_cls=LatentShardWriter, store_images=True):
    dm = LatentCacheDataModule(
        str(data_root), str(out_dir), image_size=IMAGE_SIZE, shard_size=shard_size, batch_size=3, num_workers=0
    )
    writer = writer_cls(
        store_images=store_images,
        stats_samples=10_000,
        seed=0,
        provenance={"tokenizer": {"weights_sha256": "abc", "config": {"name": "stand-in"}}},
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[writer],
        enable_model_summary=False,
    )
    trainer.predict(LatentCacheModule(tokenizer), datamodule=dm, return_predictions=False)
    return dm


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("lc")
    data = make_folder(root / "data")
    tok = StandInTokenizer()
    run_cache(data, root / "cache", tok)
    return root, data, root / "cache", tok


def test_moments_equal_direct_encode_and_flips(cache):
    _, data, out, tok = cache
    ds = LatentDataset(out, normalize=False, return_images=True)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["num_bad"] == 1 and manifest["bad"][0]["key"] == "c1_bad"
    assert len(ds) == 13 and manifest["latent_shape"] == [4, 4, 4]
    keys = [ds[i]["key"] for i in range(len(ds))]
    assert len(set(keys)) == 13 and "c1_bad" not in keys
    for i in (0, 5, 12):
        key = keys[i]
        label = int(key[1])
        path = next(data.glob(f"*/{key}.png"))
        crop = torch.from_numpy(adm_center_crop(Image.open(path).convert("RGB"), IMAGE_SIZE)).permute(2, 0, 1)
        with torch.no_grad():
            direct = tok.encode(uint8_to_unit(crop[None]))
            direct_flip = tok.encode(uint8_to_unit(crop[None].flip(-1)))
        mean, logvar = ds.moments(i)
        torch.testing.assert_close(mean, direct.mean[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(logvar, direct.logvar[0], atol=1e-6, rtol=0)
        mean_f, _ = ds.moments(i, flip=True)
        torch.testing.assert_close(mean_f, direct_flip.mean[0], atol=1e-6, rtol=0)
        item = ds[i]
        assert item["label"] == label
        expected_image = crop.flip(-1) if item["flipped"] else crop
        assert torch.equal(item["image"], expected_image)


def test_lightningdit_policy_fixed_sample_random_flip(cache):
    _, _, out, _ = cache
    ds = LatentDataset(out, policy="lightningdit", normalize=False)
    flips = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        item = ds[3]
        mean, logvar = ds.moments(3, item["flipped"])
        torch.testing.assert_close(item["latent"], fixed_posterior_sample(mean, logvar, 0, 3, item["flipped"]))
        flips.append(item["flipped"])
    assert 8 <= sum(flips) <= 32  # p = 0.5 over 40 draws
    # Within an epoch the same index gives the same latent (resume-exact, worker-independent).
    assert torch.equal(ds[3]["latent"], ds[3]["latent"])


def test_reg_policy_fresh_sample_no_flip(cache):
    _, _, out, _ = cache
    ds = LatentDataset(out, policy="reg", normalize=False)
    draws = []
    for epoch in range(200):
        ds.set_epoch(epoch)
        item = ds[2]
        assert not item["flipped"]
        draws.append(item["latent"])
    draws = torch.stack(draws)
    mean, logvar = ds.moments(2)
    assert not torch.equal(draws[0], draws[1])
    # Fresh posterior samples: their mean and std approach the stored moments.
    torch.testing.assert_close(draws.mean(0), mean, atol=4 * float(torch.exp(0.5 * logvar).max()) / 200**0.5, rtol=0)
    torch.testing.assert_close(draws.std(0), torch.exp(0.5 * logvar), rtol=0.25, atol=1e-3)


def test_statistics_match_numpy(cache):
    _, _, out, _ = cache
    stats = torch.load(out / STATS, weights_only=True)
    ds = LatentDataset(out, normalize=False)
    samples = np.stack([fixed_posterior_sample(*ds.moments(i), 0, i, False).numpy() for i in range(len(ds))])
    ref_mean = samples.transpose(1, 0, 2, 3).reshape(4, -1).mean(1)
    ref_std = samples.transpose(1, 0, 2, 3).reshape(4, -1).std(1, ddof=1)
    np.testing.assert_allclose(stats["mean"].flatten().numpy(), ref_mean, atol=1e-5)
    np.testing.assert_allclose(stats["std"].flatten().numpy(), ref_std, atol=1e-5)
    assert stats["mean"].shape == (1, 4, 1, 1)
    # A subset of the images gives other numbers (the sample count is honoured).
    sub = compute_latent_stats(out, num_samples=5, seed=1)
    assert not torch.allclose(sub.mean, stats["mean"])


def test_normalised_latents_and_official_stats_import(cache, tmp_path):
    _, _, out, _ = cache
    raw = LatentDataset(out, normalize=False)
    ds = LatentDataset(out)
    stats = torch.load(out / STATS, weights_only=True)
    expected = (raw[4]["latent"] - stats["mean"][0]) / stats["std"][0]
    torch.testing.assert_close(ds[4]["latent"], expected)
    # The official latents_stats.pt is a {"mean", "std"} dict of (1, C, 1, 1): it loads as is.
    official = tmp_path / "latents_stats.pt"
    torch.save({"mean": torch.zeros(1, 4, 1, 1), "std": torch.full((1, 4, 1, 1), 2.0)}, official)
    norm = LatentNormalizer.load(official)
    z = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(norm.normalize(z), z / 2)
    torch.testing.assert_close(norm.denormalize(norm.normalize(z)), z)


def test_mismatches_are_refused(cache, tmp_path):
    _, _, out, _ = cache
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(32, 16, 16\)"):
        LatentDataset(out, expected_latent_shape=(32, 16, 16))
    with pytest.raises(ValueError, match="abc.*other-tokenizer"):
        LatentDataset(out, expected_tokenizer_hash="other-tokenizer")
    with pytest.raises(FileNotFoundError, match="statistics"):
        LatentDataset(out, stats_path=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="manifest"):
        LatentDataset(tmp_path)


class CrashAfterOneShard(LatentShardWriter):
    def _flush(self, dm, k):
        super()._flush(dm, k)
        raise RuntimeError("simulated crash")


def test_interrupted_cache_resumes_to_identical_shards(cache, tmp_path):
    _, data, out, tok = cache
    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cache(data, resumed, tok, writer_cls=CrashAfterOneShard)
    assert (resumed / sidecar_name(0)).exists() and not (resumed / MANIFEST).exists()
    first_mtime = (resumed / shard_name(0)).stat().st_mtime_ns
    # A partial shard left behind (file without sidecar) is redone.
    (resumed / shard_name(1)).write_bytes(b"partial")
    run_cache(data, resumed, tok)
    assert (resumed / shard_name(0)).stat().st_mtime_ns == first_mtime  # finished shard kept
    ref = json.loads((out / MANIFEST).read_text())
    got = json.loads((resumed / MANIFEST).read_text())
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in ref["shards"]]
    for s in ref["shards"]:
        a, b = ShardReader(out / s["file"]), ShardReader(resumed / s["file"])
        for name in ("mean", "logvar", "mean_flip", "logvar_flip", "label", "image"):
            assert torch.equal(a.tensor(name), b.tensor(name))


@pytest.mark.slow
def test_two_rank_cache_has_every_key_once(tmp_path, repo_root):
    import os
    import subprocess
    import sys

    data = make_folder(tmp_path / "data", n_per_class=(4, 4, 3), corrupt=False)
    # The helper imports this test module (its stand-in tokenizer): tests/ joins the path through the environment.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), str(repo_root / "tests")])}
    proc = subprocess.run(
        [sys.executable, str(repo_root / "tests/scripts/cache_ddp.py"), str(data), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    keys = [k for s in manifest["shards"] for k in s["keys"]]
    expected = sorted(p.stem for p in data.glob("*/*.png"))
    assert sorted(keys) == expected and len(keys) == len(set(keys)) == 11
    assert len(manifest["shards"]) == 4  # 11 images in shards of 3, split over two ranks


def test_cache_script_with_debug_tokenizer(tmp_path):
    """`vfmvae cache-latents` on an exported debug VFMVAE: manifest provenance and moments = direct encode."""
    from lightning_modules.commands.cache_latents import run as cache_main
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.export import save_pretrained

    torch.manual_seed(0)
    tok = VFMVAE("debug").eval()
    record = save_pretrained(tok, tmp_path / "tok")
    data = make_folder(tmp_path / "data", n_per_class=(2, 2), corrupt=False)
    out = tmp_path / "cache"
    cache_main(
        [
            "--data-root",
            str(data),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--out",
            str(out),
            "--image-size",
            "64",
            "--shard-size",
            "3",
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--store-images",
        ]
    )
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tokenizer"]["weights_sha256"] == record["weights_sha256"]
    assert manifest["latent_shape"] == [tok.cfg.z_dim, 4, 4] and manifest["num_classes"] == 2
    ds = LatentDataset(out, normalize=True, expected_tokenizer_hash=record["weights_sha256"], return_images=True)
    assert len(ds) == 4
    with torch.no_grad():
        direct = tok.encode(uint8_to_unit(torch.stack([ds[i]["image"] for i in range(4)])))
    for i in range(4):
        mean, _ = ds.moments(i, flip=ds[i]["flipped"])
        torch.testing.assert_close(mean, direct.mean[i], atol=1e-5, rtol=0)


def test_imagenet_datamodule_latents_mode(cache):
    """The shared ImageNetDataModule serves the cache: normalised batches, images, shape/classes, epoch draws."""
    from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule

    _, _, out, _ = cache
    cfg = ImageNetDataConfig(
        mode="latents",
        latent_root=str(out),
        latent_policy="reg",
        return_images=True,
        batch_size=4,
        num_workers=0,
        val_split=None,
        seed=3,
    )
    dm = ImageNetDataModule(cfg)
    dm.setup("fit")
    assert dm.latent_shape == (4, 4, 4) and dm.num_classes == 1000
    from lightning_modules.diffusion import _data_provenance

    assert _data_provenance(dm)["tokenizer"]["weights_sha256"] == "abc"  # provenance flows to the DiT checkpoint
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["latent"].shape == (4, 4, 4, 4) and batch["latent"].dtype == torch.float32
    assert batch["image"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64 and len(batch["key"]) == 4
    ref = LatentDataset(out, policy="reg", seed=3)
    ref.set_epoch(0)
    i = int(batch["index"][0])
    torch.testing.assert_close(batch["latent"][0], ref[i]["latent"])
    loader.sampler.set_epoch(1)
    again = {int(k): v for k, v in zip(next(iter(loader))["index"], next(iter(loader))["latent"])}
    assert all(not torch.equal(v, ref[k]["latent"]) for k, v in again.items())  # REG: fresh sample per epoch
    with pytest.raises(ValueError, match="latent_root"):
        ImageNetDataConfig(mode="latents")
