"""`vfmvae dynamics` end to end (docs/analyses.md, "Representation dynamics"): two checkpoints of one tiny
LightningDiT run, a tiny exported tokenizer and an injected reference feature extractor give a table per
block and checkpoint, the CSV/JSON/PNG files, and the numbers of the SE-CKNNA block probe run by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import cpu_trainer
from lightning.pytorch import Trainer
from PIL import Image
from test_diffusion_helpers import TinyLatentDataModule, tiny_module

from callbacks.ema import EMACallback
from vfmvae.commands import dynamics as command
from vfmvae.dit.loading import load_sampling_network
from vfmvae.metrics.cknna import cknna
from vfmvae.metrics.dynamics import dynamics_matrix
from vfmvae.metrics.se_probe import dit_block_features
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer.config import get_config


class TinyReference:
    """Stand-in reference VFM: a fixed random projection of 8x8 average-pooled pixels (16-d)."""

    def __init__(self):
        self.proj = torch.randn(3 * 64, 16, generator=torch.Generator().manual_seed(3))

    def clean(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.proj


def _trainer(max_steps: int) -> Trainer:
    # Lightning's default sanity steps, as before (cpu_trainer turns them off)
    return cpu_trainer(
        max_steps=max_steps, num_sanity_val_steps=2, callbacks=[EMACallback(["net"], preset="dit", decay=0.5)]
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamics")
    torch.manual_seed(0)
    module = tiny_module("lightningdit", lr=1e-2)
    first = _trainer(2)
    first.fit(module, datamodule=TinyLatentDataModule(n=8, batch_size=4))
    first.save_checkpoint(root / "a.ckpt")
    second = _trainer(6)
    second.fit(module, datamodule=TinyLatentDataModule(n=8, batch_size=4), ckpt_path=str(root / "a.ckpt"))
    second.save_checkpoint(root / "b.ckpt")
    VFMVAE(get_config("debug")).save_pretrained(root / "tokenizer")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"im_{i:03d}.png")
    return root


def test_help_runs():
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--help"])
    assert exit_info.value.code == 0


def test_dynamics_of_two_checkpoints(run_dir, repo_root, capsys):
    out = run_dir / "out"
    argv = [
        *("--config", str(repo_root / "configs/analyses/dynamics.yaml")),
        *("--checkpoints", str(run_dir / "b.ckpt"), str(run_dir / "a.ckpt")),  # sorted by step in the output
        *("--images", str(run_dir / "images"), "--num-images", "12", "--tokenizer", str(run_dir / "tokenizer")),
        *("--resolution", "64", "--topk", "3", "--batch-size", "5", "--device", "cpu", "--out-dir", str(out)),
    ]
    args = command.parse_args(argv)
    assert args.noise_fraction == 0.5 and args.weights == "ema" and args.seed == 42  # from the config file
    rows = command.run(argv, reference_extractor=TinyReference())
    printed = capsys.readouterr().out
    values, features, labels = dynamics_matrix(rows)
    assert labels == ["step 2", "step 6"]
    assert features[0] == "embedder" and features[-1] == "final_layer" and "block_0" in features
    assert np.isfinite(values).all() and not np.allclose(values[:, 0], values[:, 1])  # training moved them
    # The SE-CKNNA block probe by hand for the second checkpoint: posterior samples (seed 42, batches of 5)
    # normalised with the run's recorded statistics, the same noise seed, CKNNA with the reference.
    tokenizer = VFMVAE.from_pretrained(run_dir / "tokenizer").float()
    paths = sorted((run_dir / "images").glob("*.png"))[:12]
    gen, zs = torch.Generator().manual_seed(42), []
    for start in range(0, 12, 5):
        batch = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[start : start + 5]])
        with torch.no_grad():
            z = tokenizer.encode(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255).sample(generator=gen)
        zs.append(z)
    latents = torch.cat(zs)
    net, _, record, provenance = load_sampling_network(run_dir / "b.ckpt")
    mean = torch.as_tensor(provenance["latent_stats"]["mean"]).reshape(1, -1, 1, 1)
    std = torch.as_tensor(provenance["latent_stats"]["std"]).reshape(1, -1, 1, 1)
    ref = TinyReference().clean(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))
    feats = dit_block_features(
        net, (latents - mean) / std, noise_fraction=0.5, batch_size=5, generator=torch.Generator().manual_seed(42)
    )
    by_hand = {name: cknna(f, ref, topk=3) for name, f in feats.items()}
    got = {r["feature"]: r["cknna"] for r in rows if r["step"] == record["global_step"]}
    assert got == pytest.approx(by_hand, abs=1e-6)
    # Files: CSV rows = JSON rows, a PNG, the table printed.
    with open(out / "dynamics.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 2 * len(features)
    saved = json.loads((out / "dynamics.json").read_text())
    assert saved["rows"] == rows and saved["protocol"]["n_images"] == 12
    blocks = {k: v for k, v in by_hand.items() if k.startswith("block_")}
    summary = saved["summary"][1]
    assert summary["label"] == "step 6" and summary["argmax_block"] == max(blocks, key=blocks.get)
    assert summary["mean_over_blocks"] == pytest.approx(np.mean(list(blocks.values())), abs=1e-6)
    assert summary["max_over_blocks"] == pytest.approx(max(blocks.values()), abs=1e-6)
    assert (out / "dynamics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| feature | step 2 | step 6 |" in printed and "| **mean_over_blocks** |" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "x", "--tokenizer", "t"], "--checkpoints is required"),
        (["--checkpoints", "missing.ckpt", "--images", "x", "--tokenizer", "t"], "checkpoint not found"),
        (["--checkpoints", "A", "--images", "IMG", "--tokenizer", "t", "--reference", "nope:x"], "unknown model kind"),
        (["--checkpoints", "A", "--images", "IMG", "--tokenizer", "t", "--topk", "20"], "needs more than 20 images"),
    ],
)
def test_bad_input_is_one_line_error(argv, message, run_dir, capsys):
    argv = [str(run_dir / "a.ckpt") if a == "A" else str(run_dir / "images") if a == "IMG" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        command.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_unknown_config_key_is_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("noise_fractoin: 0.4\n")
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--config", str(config)])
    assert exit_info.value.code == 2
    assert "unknown keys ['noise_fractoin']" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [((), "CKPTS"), (("CKPTS=a.ckpt", "IMAGES=i", "TOKENIZER=t"), "REF")])
def test_make_dynamics_names_what_is_missing(repo_root, args, message):
    import subprocess

    proc = subprocess.run(
        ["make", "-s", "-C", str(repo_root), "dynamics", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_reg_checkpoint_takes_class_tokens_from_the_cls_vfm(run_dir, tmp_path):
    """REG carries a class token: the command computes it with --cls-vfm (a tiny random DINOv2 here)."""
    module = tiny_module("reg")
    trainer = _trainer(1)
    trainer.fit(module, datamodule=TinyLatentDataModule(n=4, batch_size=4))
    trainer.save_checkpoint(tmp_path / "reg.ckpt")
    argv = [
        *("--checkpoints", str(tmp_path / "reg.ckpt"), "--images", str(run_dir / "images"), "--num-images", "12"),
        *("--tokenizer", str(run_dir / "tokenizer"), "--cls-vfm", "debug-dinov2", "--resolution", "64"),
        *("--topk", "3", "--device", "cpu", "--out-dir", str(tmp_path / "out")),
    ]
    rows = command.run(argv, reference_extractor=TinyReference())
    features = [r["feature"] for r in rows]
    assert features[0] == "embedder" and "projector_0" in features
    assert all(np.isfinite(r["cknna"]) for r in rows)


def test_dynamics_reads_any_tokenizer_kind(run_dir):
    # paper Table 1 compares tokenizers under the same diffusion training: a VA-VAE (here a seeded random one of
    # the same latent shape) encodes the probe images through the same command.
    common = [
        *("--checkpoints", str(run_dir / "a.ckpt"), "--images", str(run_dir / "images"), "--num-images", "12"),
        *("--resolution", "64", "--topk", "3", "--batch-size", "6", "--device", "cpu"),
    ]
    vavae = command.run(
        [*common, "--tokenizer", "none", "--tokenizer-preset", "debug-vavae", "--out-dir", str(run_dir / "o1")],
        reference_extractor=TinyReference(),
    )
    ours = command.run(
        [*common, "--tokenizer", str(run_dir / "tokenizer"), "--out-dir", str(run_dir / "o2")],
        reference_extractor=TinyReference(),
    )
    assert [r["feature"] for r in vavae] == [r["feature"] for r in ours]
    assert all(np.isfinite(r["cknna"]) for r in vavae)
    assert [r["cknna"] for r in vavae] != pytest.approx([r["cknna"] for r in ours], abs=1e-6)
