"""`vfmvae sample` and `make sample`: PNGs + ADM `.npz`, provenance, EMA weights, resume
(docs/design.md, "Sampling and guidance")."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from test_diffusion_helpers import TinyLatentDataModule, tiny_module

from callbacks.ema import EMACallback
from vfmvae.codec import LatentNormalizer
from vfmvae.dit import build_diffusion_network, class_labels
from vfmvae.transport.sampling import sampler_config


def _load_script(repo_root):
    """The command module; its ``run(argv)`` returns the ``.npz`` and raises on bad input."""
    return importlib.import_module("lightning_modules.commands.sample")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step LightningDiT debug run with EMA, saved as a Lightning checkpoint, plus stats."""
    root = tmp_path_factory.mktemp("sample")
    module = tiny_module("lightningdit", lr=1e-2)
    ema = EMACallback(["net"], preset="dit", decay=0.5)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ema],
    )
    dm = TinyLatentDataModule(n=8, batch_size=4)
    # The checkpoint records these statistics; sample.py refuses any other --latent-stats.
    dm.dataset.normalizer = LatentNormalizer(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.5, 1.5, 8))
    trainer.fit(module, datamodule=dm)
    ckpt = root / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    stats = root / "latents_stats.pt"
    dm.dataset.normalizer.save(stats)
    return root, ckpt, stats, module, ema


def _argv(ckpt, stats, out, *extra):
    return [
        "--ckpt",
        str(ckpt),
        "--tokenizer",
        "none",
        "--tokenizer-preset",
        "debug",
        "--latent-stats",
        str(stats),
        "--out",
        str(out),
        "--num-images",
        "6",
        "--chunk-size",
        "4",
        "--batch-size",
        "2",
        "--num-steps",
        "3",
        "--label-mode",
        "balanced",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
        *extra,
    ]


def test_sample_writes_pngs_npz_with_provenance_and_resumes(trained, repo_root, tmp_path):
    root, ckpt, stats, module, ema = trained
    script = _load_script(repo_root)
    out = tmp_path / "samples"
    npz = script.run(_argv(ckpt, stats, out))
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 64, 64, 3) and data["arr_0"].dtype == np.uint8
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [f"{i:06d}.png" for i in range(6)]
    assert data["labels"].tolist() == [0, 1, 2, 3, 4, 5]  # balanced: image i -> class i % 1000
    prov = json.loads(str(data["provenance"]))
    assert prov["label_mode"] == "balanced" and prov["seed"] == 0 and prov["network"]["weights"] == "ema"
    assert len(prov["network_sha256"]) == 64 and len(prov["tokenizer_sha256"]) == 64
    assert prov["sampler"]["method"] == "euler" and prov["sampler"]["timestep_shift"] == 0.3
    assert prov["sampler"]["cfg_scale"] == 4.0 and prov["sampler"]["guidance_low"] == 0.125
    # EMA weights were sampled: the recorded network hash is the EMA state's, not the live weights'.
    from vfmvae.provenance import state_dict_sha256

    live = state_dict_sha256(module.net)
    with ema.ema.swap():
        ema_hash = state_dict_sha256(module.net)
    assert prov["network_sha256"] == ema_hash != live
    first = data["arr_0"].copy()

    # Simulate a crash in chunk 1: its record and one PNG are gone; chunk 0 must not be redone.
    os.remove(out / "chunks" / "chunk_00001.json")
    os.remove(out / "images" / "000005.png")
    os.remove(npz)
    kept = {i: os.stat(out / "images" / f"{i:06d}.png").st_mtime_ns for i in range(4)}
    npz2 = script.run(_argv(ckpt, stats, out))
    assert {i: os.stat(out / "images" / f"{i:06d}.png").st_mtime_ns for i in range(4)} == kept
    np.testing.assert_array_equal(np.load(npz2)["arr_0"], first)  # same seeds -> same images

    with pytest.raises(ValueError, match="other settings"):
        script.run(_argv(ckpt, stats, out, "--seed", "1"))


def test_sampler_settings_and_labels():
    ldit_net, reg_net = build_diffusion_network("lightningdit", "debug"), build_diffusion_network("reg", "debug")
    ldit = sampler_config(ldit_net)
    assert (ldit.method, ldit.num_steps, ldit.timestep_shift, ldit.cfg_scale, ldit.guidance_low, ldit.cfg_channels) == (
        "euler",
        250,
        0.3,
        4.0,
        0.125,
        3,
    )
    reg = sampler_config(reg_net)
    assert (reg.method, reg.num_steps, reg.cfg_scale, reg.cls_cfg_scale, reg.guidance_high) == (
        "sde",
        250,
        4.0,
        4.0,
        0.8,
    )
    assert sampler_config(reg_net, cfg_scale=1.0).cfg_scale == 1.0
    assert sampler_config(ldit_net, cfg_channels="all").cfg_channels is None
    counts = torch.bincount(class_labels("balanced", 3000, 1000), minlength=1000)
    assert counts.min() == counts.max() == 3
    r = class_labels("random", 5000, 1000, generator=torch.Generator().manual_seed(0))
    assert r.min() >= 0 and r.max() <= 999 and len(torch.unique(r)) > 900


def test_sample_reg_checkpoint_with_sde(tmp_path, repo_root):
    module = tiny_module("reg")
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EMACallback(["net"], preset="dit")],
    )
    trainer.fit(module, datamodule=TinyLatentDataModule(n=4, batch_size=4))
    ckpt = tmp_path / "reg.ckpt"
    trainer.save_checkpoint(ckpt)
    script = _load_script(repo_root)
    # No --latent-stats: the checkpoint recorded the statistics of its latent dataset.
    argv = [
        "--ckpt",
        str(ckpt),
        "--tokenizer",
        "none",
        "--tokenizer-preset",
        "debug",
        "--out",
        str(tmp_path / "o"),
        "--num-images",
        "2",
        "--chunk-size",
        "2",
        "--num-steps",
        "3",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
    ]
    data = np.load(script.run(argv))
    assert data["arr_0"].shape == (2, 64, 64, 3)
    prov = json.loads(str(data["provenance"]))
    assert prov["sampler"]["method"] == "sde" and prov["family"] == "reg"
    assert prov["training_provenance"]["tokenizer"]["weights_sha256"] == "test-tokenizer"


@pytest.mark.slow
def test_make_sample_ddp_two_processes_matches_one(trained, repo_root, tmp_path):
    """`make sample` with 2 CPU processes (gloo DDP): chunks split by rank, same images as one process."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    _, ckpt, stats, _, _ = trained
    out = tmp_path / "make_samples"
    cmd = [
        "make",
        "-s",
        "sample",
        f"CKPT={ckpt}",
        "TOKENIZER=none",
        "TOKENIZER_PRESET=debug",
        f"STATS={stats}",
        f"OUT={out}",
        "NUM=3",
        "CHUNK=1",
        "DEVICES=2",
        "SAMPLE_ARGS=--num-steps 2 --batch-size 2 --accelerator cpu",
    ]
    res = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "rank 1: 1 chunks to sample" in log and "rank 0: 2 chunks to sample" in log
    ddp = np.load(out / "samples_3x64x64x3.npz")["arr_0"]
    single = _load_script(repo_root).run(
        [
            "--ckpt",
            str(ckpt),
            "--tokenizer",
            "none",
            "--tokenizer-preset",
            "debug",
            "--latent-stats",
            str(stats),
            "--out",
            str(tmp_path / "one"),
            "--num-images",
            "3",
            "--chunk-size",
            "1",
            "--num-steps",
            "2",
            "--batch-size",
            "2",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
        ]
    )
    np.testing.assert_array_equal(np.load(single)["arr_0"], ddp)  # per-chunk seeds: independent of the world size
    res = subprocess.run(["make", "-s", "sample"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "CKPT" in (res.stdout + res.stderr)


def test_official_release_files_sample_directly(fixtures_dir, repo_root, tmp_path):
    """Released official LightningDiT `.pt` + official tokenizer `.pth` + `latents_stats.pt` -> images."""
    from safetensors.torch import load_file

    def state(name):
        tensors = load_file(str(fixtures_dir / f"{name}.safetensors"))
        return {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}, tensors

    dit_sd, _ = state("lightningdit_tiny")
    tok_sd, tok_t = state("vfmvae_tiny")
    dit_kwargs = json.loads((fixtures_dir / "lightningdit_tiny.json").read_text())["constructor_kwargs"]
    tok_kwargs = json.loads((fixtures_dir / "vfmvae_tiny.json").read_text())["generator_kwargs"]
    # Release layouts: {"model", "ema"} for the DiT (EMA is sampled), {"G_ema"} for the tokenizer.
    torch.save({"model": {k: torch.zeros_like(v) for k, v in dit_sd.items()}, "ema": dit_sd}, tmp_path / "dit.pt")
    torch.save({"G_ema": tok_sd}, tmp_path / "tok.pth")
    (tmp_path / "dit.json").write_text(json.dumps(dit_kwargs))
    (tmp_path / "g.json").write_text(json.dumps(tok_kwargs))
    torch.save({"mean": torch.zeros(1, 8, 1, 1), "std": torch.ones(1, 8, 1, 1)}, tmp_path / "latents_stats.pt")
    script = _load_script(repo_root)
    argv = [
        "--ckpt",
        str(tmp_path / "dit.pt"),
        "--model",
        "lightningdit",
        "--official-kwargs",
        str(tmp_path / "dit.json"),
        "--tokenizer",
        str(tmp_path / "tok.pth"),
        "--tokenizer-kwargs",
        str(tmp_path / "g.json"),
        "--latent-stats",
        str(tmp_path / "latents_stats.pt"),
        "--out",
        str(tmp_path / "o"),
        "--num-images",
        "2",
        "--chunk-size",
        "2",
        "--num-steps",
        "3",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
    ]
    data = np.load(script.run(argv))
    assert data["arr_0"].shape == (2, 128, 128, 3)  # 8x8 latents through the f16 decoder
    prov = json.loads(str(data["provenance"]))
    assert prov["network"]["kind"] == "official"
    from vfmvae.dit import from_official_lightningdit
    from vfmvae.provenance import state_dict_sha256

    assert prov["network_sha256"] == state_dict_sha256(from_official_lightningdit(dit_sd, dit_kwargs))
    assert tok_t["outputs.img"].shape[-1] == 64  # (sanity: the fixture's own 4x4 latents decode to 64 px)


def test_decoder_from_an_export_folder_and_tokenizer_mismatch_is_refused(trained, repo_root, tmp_path):
    from vfmvae.tokenizer import VFMVAE
    from vfmvae.tokenizer.loading import load_decoder

    torch.manual_seed(3)
    tok = VFMVAE("debug", decoder_only=True).eval()
    tok.save_pretrained(tmp_path / "tok")
    dec = load_decoder(tmp_path / "tok")
    z = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(dec.decode(z), tok.decode(z))
    assert not any(p.requires_grad for p in dec.parameters()) and not dec.training
    _, ckpt, stats, _, _ = trained  # trained on a cache whose manifest names tokenizer "test-tokenizer"
    script = _load_script(repo_root)
    argv = _argv(ckpt, stats, tmp_path / "o")
    argv[argv.index("--tokenizer") + 1] = str(tmp_path / "tok")
    with pytest.raises(ValueError, match="trained on latents of tokenizer"):
        script.run(argv)


def test_npz_is_the_official_truncating_conversion_of_the_decoded_batch(trained, repo_root, tmp_path):
    """Paper protocol: uint8 = official `tools/decode` (`to_pil_image(((x + 1) / 2).clamp(0, 1))`, truncation);
    `--uint8-mode round` keeps the earlier rounding, and the two differ on this batch."""
    from torchvision.transforms.functional import to_pil_image

    from vfmvae.codec import to_uint8
    from vfmvae.dit.loading import load_sampling_network
    from vfmvae.tokenizer.loading import load_decoder, load_latent_stats
    from vfmvae.transport.sampling import sample_latents
    from vfmvae.utils.sample_store import batch_seed

    _, ckpt, stats, _, _ = trained
    script = _load_script(repo_root)
    common = ["--num-images", "2", "--chunk-size", "2", "--batch-size", "2"]
    argv = _argv(ckpt, stats, tmp_path / "t") + common
    npz = np.load(script.run(argv))
    prov = json.loads(str(npz["provenance"]))
    assert (prov["uint8_mode"], prov["precision"]) == ("truncate", "fp32")
    # The same decoded batch, recomputed: EMA network, the batch's seed, balanced labels 0 and 1.
    net, _, _, _ = load_sampling_network(ckpt)
    seed = batch_seed(0, 0)
    labels = net.condition.draw("balanced", 2, generator=torch.Generator().manual_seed(seed))
    latents = sample_latents(
        net, sampler_config(net, num_steps=3), labels, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        decoded = load_decoder(None, "debug").decode(load_latent_stats(stats).denormalize(latents))
    official = np.stack([np.asarray(to_pil_image(((x + 1) / 2).clamp(0, 1))) for x in decoded])
    np.testing.assert_array_equal(npz["arr_0"], official)
    rounded = np.load(script.run(_argv(ckpt, stats, tmp_path / "r", "--uint8-mode", "round") + common))["arr_0"]
    np.testing.assert_array_equal(rounded, to_uint8(decoded, "round").permute(0, 2, 3, 1).numpy())
    assert (rounded != official).any()
