"""Progress bars of the long loops (docs/commands.md, "Console"): drawn only when a command turns them on, only on
rank 0, with a count of the total and a time-left field; ``--no-progress`` turns them off."""

from __future__ import annotations

import numpy as np
import torch

from vfmvae.metrics.inception import extract_features
from vfmvae.metrics.se_probe import run_chunks
from vfmvae.utils.progress import progress, progress_enabled


def test_off_by_default_and_on_only_inside_the_context():
    items = [1, 2, 3]
    assert progress(items, total=3, desc="x") is items  # library use and training-time probes: silent
    with progress_enabled():
        bar = progress(items, total=3, desc="x")
        assert bar is not items and list(bar) == items
        with progress_enabled(False):  # --no-progress
            assert progress(items, total=3) is items
    assert progress(items, total=3) is items


def test_only_rank_zero_draws(monkeypatch):
    items = [1, 2]
    monkeypatch.setenv("RANK", "1")
    with progress_enabled():
        assert progress(items, total=2) is items
    monkeypatch.setenv("RANK", "0")
    with progress_enabled():
        assert progress(items, total=2) is not items


class _Features(torch.nn.Module):
    """Stand-in extractor: the mean colour of each image as its feature."""

    def forward(self, x):
        return {"pool": x.float().mean((2, 3))}


def test_inception_loop_shows_total_and_time_left(capfd):
    images = np.zeros((10, 8, 8, 3), dtype=np.uint8)
    with progress_enabled():
        feats = extract_features(images, _Features(), batch_size=4, keys=("pool",))
    err = capfd.readouterr().err
    assert feats["pool"].shape == (10, 3)
    assert "Inception" in err and "/3 [" in err and "<" in err, err  # 3 batches; tqdm's "[elapsed<left" field


def test_se_chunks_bar_is_named_and_silent_without_a_command(capfd):
    def fn(chunk, idx):
        return {"f": torch.ones(len(idx), 2)}

    run_chunks(fn, 6, 2)
    assert capfd.readouterr().err == ""  # e.g. the SE-CKNNA probe callback inside a training run
    with progress_enabled():
        out = run_chunks(fn, 6, 2, desc="vfm:debug-siglip")
    err = capfd.readouterr().err
    assert out["f"].shape == (6, 2) and "vfm:debug-siglip" in err and "/3 [" in err, err


def test_eval_reconstruction_bar_and_no_progress(tmp_path, capfd):
    from PIL import Image

    from lightning_modules.commands.eval_reconstruction import run
    from vfmvae.tokenizer import VFMVAE

    torch.manual_seed(0)
    VFMVAE("debug").save_pretrained(tmp_path / "tok")
    data = tmp_path / "val"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(data / f"{i}.png")
    argv = ["--tokenizer", str(tmp_path / "tok"), "--data-root", str(data), "--resolution", "64"]
    argv += ["--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "r.json")]
    run(argv)
    err = capfd.readouterr().err
    assert "reconstruction" in err and "/2 [" in err, err
    run([*argv, "--no-progress"])
    assert "/2 [" not in capfd.readouterr().err
