"""``vfmvae make-filter-list`` keeps exactly the images whose shorter side is >= 256 px."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest
from test_data_helpers import make_samples, write_imagefolder, write_shards

from datamodules.key_filter import load_key_list

# Sizes around the threshold: (W, H); kept iff min(W, H) >= 256.
SIZES = [(256, 256), (255, 400), (400, 255), (300, 256), (256, 1000), (257, 257), (100, 80), (512, 255)]


def load_script(repo_root):
    """The command module; its ``run(argv)`` returns the counts and raises on bad input."""
    return importlib.import_module("lightning_modules.commands.make_filter_list")


@pytest.fixture(scope="module")
def samples():
    return make_samples(per_class=len(SIZES), sizes=SIZES)


def expected_keys(samples) -> set[str]:
    return {s["key"] for s in samples if min(s["size"]) >= 256}


def test_imagefolder_list_keeps_exactly_the_large_images(tmp_path, samples, repo_root, capsys):
    write_imagefolder(tmp_path / "train", samples)
    (tmp_path / "train" / samples[0]["synset"] / "corrupt.JPEG").write_bytes(b"not an image")
    script = load_script(repo_root)
    stats = script.run(["--source", "imagefolder", "--root", str(tmp_path / "train"), "--out", str(tmp_path / "k.txt")])
    keys = load_key_list(tmp_path / "k.txt")
    assert keys == expected_keys(samples) and 0 < len(keys) < len(samples)
    assert stats == {"seen": len(samples) + 1, "kept": len(keys), "unreadable": 1}
    out = capsys.readouterr()
    assert f"kept {len(keys)} of {len(samples) + 1} images" in out.out and "1 unreadable" in out.out
    assert "corrupt" in out.err  # the unreadable key is reported


def test_webdataset_list_in_official_pickle_format(tmp_path, samples, repo_root):
    write_shards(tmp_path / "wds", samples, num_shards=3)
    script = load_script(repo_root)
    script.run(
        [
            "--source",
            "webdataset",
            "--root",
            str(tmp_path / "wds"),
            "--split",
            "train",
            "--out",
            str(tmp_path / "k.pkl"),
            "--no-progress",
        ]
    )
    with open(tmp_path / "k.pkl", "rb") as f:
        raw = pickle.load(f)
    assert isinstance(raw, list) and set(raw) == expected_keys(samples)
    assert load_key_list(tmp_path / "k.pkl") == expected_keys(samples)


def test_cli_runs_with_worker_processes_and_a_progress_bar(tmp_path, samples, repo_root):
    write_imagefolder(tmp_path / "train", samples[:8])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_modules",
            "make-filter-list",
            "--source",
            "imagefolder",
            "--root",
            str(tmp_path / "train"),
            "--out",
            str(tmp_path / "k.txt"),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "reading image sizes" in proc.stderr  # tqdm writes to stderr
    assert load_key_list(tmp_path / "k.txt") == expected_keys(samples[:8])


def test_missing_root_is_an_error(tmp_path, repo_root):
    script = load_script(repo_root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        script.run(["--source", "imagefolder", "--root", str(tmp_path / "absent"), "--out", str(tmp_path / "k.txt")])
