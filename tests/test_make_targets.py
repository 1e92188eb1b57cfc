"""The README's make targets: missing variables are named, and the data-path targets run on tiny inputs."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch


def make(repo_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("target", "variable"),
    [
        ("cache-latents", "DATA_ROOT"),
        ("train-diffusion", "MODEL=lightningdit|reg"),
        ("sample", "CKPT"),
        ("evaluate", "SAMPLES"),
        ("eval-reconstruction", "TOKENIZER"),
    ],
)
def test_missing_variable_is_named(repo_root, target, variable):
    proc = make(repo_root, target)
    assert proc.returncode != 0
    assert variable in proc.stderr, proc.stderr


def test_protocol_options_reach_the_evaluation_scripts(repo_root):
    """PR_DTYPE / UINT8_MODE are the make spellings of --pr-distance-dtype / --uint8-mode; unset = paper protocol."""
    proc = make(repo_root, "-n", "evaluate", "SAMPLES=s.npz", "REF=r.npz", "PR_DTYPE=float32")
    assert "--pr-distance-dtype float32" in proc.stdout, proc.stdout + proc.stderr
    assert "--pr-distance-dtype" not in make(repo_root, "-n", "evaluate", "SAMPLES=s.npz", "REF=r.npz").stdout
    args = ("eval-reconstruction", "TOKENIZER=t", "DATA_ROOT=d", "NO_FID=1", "NO_LPIPS=1")
    assert "--uint8-mode round" in make(repo_root, "-n", *args, "UINT8_MODE=round").stdout
    assert "--uint8-mode" not in make(repo_root, "-n", *args).stdout


@pytest.mark.slow
def test_cache_latents_and_eval_reconstruction_through_make(repo_root, tmp_path):
    """`make cache-latents` and `make eval-reconstruction` on an exported debug tokenizer and 15 demo photos."""
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder
    from datamodules.latent_dataset import LatentDataset
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.export import save_pretrained

    torch.manual_seed(0)
    record = save_pretrained(VFMVAE("debug").eval(), tmp_path / "tok")
    data = tmp_path / "data"
    write_demo_imagefolder(data, DemoDataConfig(resolution=64, num_per_class=1))
    out = tmp_path / "cache"
    proc = make(
        repo_root,
        "cache-latents",
        f"DATA_ROOT={data}",
        f"TOKENIZER={tmp_path / 'tok'}",
        f"OUT={out}",
        "DEVICES=1",
        "IMAGE_SIZE=64",
        "BATCH=2",
        "CACHE_ARGS=--accelerator cpu --num-workers 0 --shard-size 4 --store-images",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data_set = LatentDataset(out, expected_tokenizer_hash=record["weights_sha256"], return_images=True)
    assert len(data_set) == 15 and data_set.latent_shape == (8, 4, 4)

    report = tmp_path / "rec.json"
    proc = make(
        repo_root,
        "eval-reconstruction",
        f"TOKENIZER={tmp_path / 'tok'}",
        f"DATA_ROOT={data}",
        "NO_FID=1",
        "NO_LPIPS=1",
        "IMAGE_SIZE=64",
        "BATCH=3",
        "DEVICE=cpu",
        f"OUT={report}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert "psnr" in json.dumps(result).lower() and "ssim" in json.dumps(result).lower()
    assert result["kind"] == "reconstruction" and result["protocol"]["uint8"].startswith("truncate")
