"""`vfmvae reference-stats`: ADM-layout statistics of an image folder, checked against an independent numpy
computation with a tiny stand-in for the Inception network; the evaluation reads the file and checks its size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from datamodules.crops import adm_center_crop
from lightning_modules.commands import reference_stats
from vfmvae.metrics.adm_suite import ImageBatch, check_resolutions, evaluate_adm, load_batch


class TinyInception(nn.Module):
    """uint8 (B, 3, H, W) -> pool (B, 8), logits (B, 5), spatial (B, 6); per-image (no batch statistics)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    @torch.no_grad()
    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        h = torch.relu(self.conv(x.float() / 127.5 - 1))
        pool = h.mean((2, 3))
        spatial = nn.functional.adaptive_avg_pool2d(h[:, :3], 1).flatten(1).repeat(1, 2) + h[:, :6].amax((2, 3))
        return {"pool": pool, "logits": self.head(pool), "spatial": spatial}


def _write_folder(root, n=23, seed=0):
    """An ImageFolder-like tree of non-square photos of several sizes (so the crop matters)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        base = rng.integers(0, 255, size=3)
        img = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        path = root / f"class_{i % 3}" / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(path)
    (root / "notes.txt").write_text("not an image")
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def _independent(paths, size):
    """Crop each image on its own, run the network one image at a time, numpy mean/cov."""
    net = TinyInception()
    crops = np.stack([adm_center_crop(Image.open(p).convert("RGB"), size) for p in paths])
    feats = [net(torch.from_numpy(c).permute(2, 0, 1)[None].contiguous()) for c in crops]
    pool = np.concatenate([f["pool"].numpy() for f in feats]).astype(np.float64)
    spatial = np.concatenate([f["spatial"].numpy() for f in feats]).astype(np.float64)
    return crops, pool, spatial


@pytest.mark.parametrize("batch_size", [1, 5])
def test_statistics_equal_an_independent_numpy_computation(tmp_path, batch_size):
    paths = _write_folder(tmp_path / "imgs")
    crops, pool, spatial = _independent(paths, 16)
    files = reference_stats.list_images(tmp_path / "imgs")
    assert files == paths  # every image at any depth, sorted, nothing else
    out = reference_stats.compute_reference_stats(
        files, TinyInception(), image_size=16, pr_images=9, store_images=True, seed=3, batch_size=batch_size
    )
    np.testing.assert_allclose(out["mu"], pool.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["sigma"], np.cov(pool, rowvar=False), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["mu_s"], spatial.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["sigma_s"], np.cov(spatial, rowvar=False), rtol=0, atol=1e-6)
    chosen = np.sort(np.random.default_rng(3).choice(len(paths), size=9, replace=False))
    np.testing.assert_allclose(out["pool"], pool[chosen], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["arr_0"], crops[chosen])
    assert out["arr_0"].shape == (9, 16, 16, 3) and int(out["resolution"]) == 16 and int(out["num_images"]) == 23


def test_shifted_moments_are_accurate_far_from_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)) * 1e-3 + 1e4  # naive sums of squares lose every digit here
    m = reference_stats.ShiftedMoments()
    for chunk in np.array_split(x, 7):
        m.update(chunk)
    mu, sigma = m.finalize()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-6)


def test_command_writes_an_adm_reference_the_evaluation_reads(tmp_path, monkeypatch, capsys):
    paths = _write_folder(tmp_path / "imgs", n=12)
    monkeypatch.setattr(reference_stats, "build_extractor", lambda weights: TinyInception())
    out = tmp_path / "ref16.npz"
    argv = ["--data-root", str(tmp_path / "imgs"), "--out", str(out), "--image-size", "16", "--num-workers", "0"]
    assert reference_stats.main([*argv, "--pr-images", "10", "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ref = load_batch(out)
    assert ref.images is None and ref.resolution == 16 and ref.pool.shape == (10, 8)

    crops, pool, _ = _independent(paths, 16)
    samples = ImageBatch("samples", crops[::-1].copy())
    from_stats = evaluate_adm(samples, ref, TinyInception())
    # The same reference given as images (the ADM way) gives the same FID, and P/R on the same 10 images.
    chosen = np.sort(np.random.default_rng(0).choice(12, size=10, replace=False))
    from_images = evaluate_adm(samples, ImageBatch("ref", crops[chosen]), TinyInception())
    assert from_stats["precision"] == from_images["precision"] and from_stats["recall"] == from_images["recall"]
    assert from_stats["fid"] == pytest.approx(0.0, abs=1e-6)  # same images, other order
    assert from_stats["num_reference"] == 10

    # 32 px samples against the 16 px reference: refused before any feature is computed.
    big = ImageBatch("samples32", np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"32x32 but the reference batch .* is 16x16"):
        check_resolutions(big, ref)
    with pytest.raises(ValueError, match="VIRTUAL_imagenet32.npz"):
        evaluate_adm(big, ref, nn.Identity())


def test_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference_stats, "build_extractor", lambda weights: TinyInception())

    def error(*argv):
        with pytest.raises(SystemExit) as exit_info:
            reference_stats.main(list(argv))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vfmvae reference-stats: error: ")
        return err[0]

    (tmp_path / "empty").mkdir()
    assert "holds 0 image(s)" in error("--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "r.npz"))
    _write_folder(tmp_path / "imgs", n=3)
    assert "must end in .npz" in error("--data-root", str(tmp_path / "imgs"), "--out", str(tmp_path / "r.pt"))
    with pytest.raises(SystemExit):
        reference_stats.main(["--help"])
    assert "--image-size" in capsys.readouterr().out


def test_evaluate_command_refuses_a_reference_of_another_resolution_in_one_line(tmp_path, capsys):
    from vfmvae.commands import evaluate

    np.savez(tmp_path / "samples512.npz", arr_0=np.zeros((3, 512, 512, 3), np.uint8))
    np.savez(tmp_path / "ref256.npz", mu=np.zeros(4), sigma=np.eye(4), resolution=np.array(256))
    argv = [str(tmp_path / "samples512.npz"), str(tmp_path / "ref256.npz"), "--inception-weights", "missing.pth"]
    with pytest.raises(SystemExit) as exit_info:  # refused before the (missing) Inception weights are read
        evaluate.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vfmvae evaluate: error: the samples")
    assert "512x512 but the reference batch" in err[0] and "is 256x256" in err[0]


def test_an_adm_512_reference_batch_is_accepted_and_a_256_one_refused(tmp_path):
    """ADM's reference layout at 512 px (images + statistics) evaluates 512 px samples; the 256 px one is refused."""
    rng = np.random.default_rng(0)
    net = TinyInception()
    samples = ImageBatch("samples", rng.integers(0, 256, size=(5, 512, 512, 3), dtype=np.uint8))
    for side in (512, 256):
        ref = rng.integers(0, 256, size=(6, side, side, 3), dtype=np.uint8)
        np.savez(tmp_path / f"VIRTUAL_imagenet{side}.npz", arr_0=ref, mu=np.zeros(8), sigma=np.eye(8))
    result = evaluate_adm(samples, load_batch(tmp_path / "VIRTUAL_imagenet512.npz"), net)
    assert result["num_reference"] == 6 and np.isfinite(result["fid"])
    with pytest.raises(ValueError, match="512x512 but the reference batch .* is 256x256"):
        evaluate_adm(samples, load_batch(tmp_path / "VIRTUAL_imagenet256.npz"), net)


def test_make_reference_stats_names_missing_variables_and_passes_the_size(repo_root):
    import subprocess

    def make(*args):
        cmd = ["make", "-s", "-C", str(repo_root), "PY=echo", "reference-stats", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    assert "DATA_ROOT is not set" in make().stderr
    assert "OUT is not set" in make("DATA_ROOT=d").stderr
    out = make("DATA_ROOT=d", "OUT=r.npz", "IMAGE_SIZE=512", "STORE_IMAGES=1").stdout
    assert "-m lightning_modules reference-stats --data-root d --out r.npz --image-size 512" in out
    assert "--store-images" in out
