"""The 512 px configs: each parses with the ddp_bf16 trainer stacked, differs from its 256 px original only where
the resolution says so, and builds on the `meta` device with the parameter counts and 32x32x32 latents."""

from __future__ import annotations

import importlib
import subprocess

import pytest
import torch
import yaml

from lightning_modules.cli import main
from vfmvae.losses import EQUIVARIANCE_PRESETS
from vfmvae.losses.equivariance import EquivarianceSampler, validate_scales
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer.config import get_config

STAGES = ("stage0_strong_alignment", "stage1_weak_alignment", "stage2_ssim_fine_tuning", "stage3_patchgan_fine_tuning")
DIFFUSION = {"lightningdit_xl1_vfmvae": 674_965_856, "reg_sitxl1_vfmvae": 684_766_240}  # tests/test_diffusion.py


def _print_config(capsys, *configs) -> dict:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    return yaml.safe_load(out)


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def _differences(a: dict, b: dict) -> dict:
    fa, fb = _flatten(a), _flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("stage", STAGES)
def test_tokenizer_512_parses_with_ddp_bf16_and_differs_only_in_resolution(capsys, repo_root, stage):
    ddp = repo_root / "configs/trainer/ddp_bf16.yaml"
    cfg = _print_config(capsys, repo_root / f"configs/tokenizer/{stage}_512.yaml", ddp)
    t = cfg["trainer"]
    assert (t["precision"], t["strategy"]["class_path"]) == ("bf16-mixed", "lightning.pytorch.strategies.DDPStrategy")
    assert cfg["data"]["init_args"]["config"]["resolution"] == 512
    base = yaml.safe_load((repo_root / f"configs/tokenizer/{stage}.yaml").read_text())
    ours = yaml.safe_load((repo_root / f"configs/tokenizer/{stage}_512.yaml").read_text())
    eq = None if stage.startswith("stage3") else "paper-512"  # stage 3 trains with EQ off, as at 256 px
    expected = {
        "data.init_args.config.resolution": (256, 512),
        "model.init_args.tokenizer_overrides.img_resolution": (None, 512),
        "model.init_args.export_dir": (f"outputs/tokenizer/export/{stage}", f"outputs/tokenizer/export/{stage}_512"),
        "trainer.logger.init_args.name": (stage, f"{stage}_512"),
    }
    if eq is not None:
        expected["model.init_args.equivariance"] = (None, eq)
    assert _differences(base, ours) == expected


def test_tokenizer_512_on_meta_gives_32x32x32_latents_with_the_256_px_parameter_counts(repo_root):
    init = yaml.safe_load((repo_root / "configs/tokenizer/stage0_strong_alignment_512.yaml").read_text())
    args = init["model"]["init_args"]
    cfg = get_config(args["tokenizer"], **args["tokenizer_overrides"])
    assert (cfg.img_resolution, cfg.z_resolution, cfg.token_resolution, cfg.space_to_depth) == (512, 32, 64, 2)
    assert cfg.block_resolutions == [16, 32, 64, 128, 256, 512]
    assert cfg.block_channels == get_config("vfmvae-f16d32-siglip2").block_channels  # widths normalised to 256 px
    with torch.device("meta"):
        model = VFMVAE(cfg)
        model256 = VFMVAE(get_config(args["tokenizer"], legacy=False))
        out = model(torch.empty(1, 3, 512, 512))
    counts = model.parameter_counts()
    assert counts == model256.parameter_counts()
    assert counts["synthesis"] == 125_712_312 - 38  # the paper's synthesis without the legacy noise strengths
    assert out.posterior.mean.shape == (1, 32, 32, 32) and out.image.shape == (1, 3, 512, 512)
    assert [tuple(f.shape) for f in out.vfm_features] == [(1, 64 * 64, 1024)] * 3  # SigLIP2 at 1024 px
    assert list(out.multiscale) == [256, 128, 64, 32, 16]


def test_paper_512_equivariance_scales():
    eq = EQUIVARIANCE_PRESETS["paper-512"]
    assert (eq.latent_scales, eq.input_scales) == ((0.25, 0.5, 0.75, 1.0), (0.25, 0.5, 0.75))
    validate_scales(eq, 512)  # latent sides 8, 16, 24, 32: all multiples of the fusion adapters' 4
    sampler = EquivarianceSampler(eq, 512, seed=0)
    scales = {sampler.sample().scale for _ in range(400)}
    assert scales == {0.25, 0.5, 0.75, 1.0}
    with pytest.raises(ValueError, match="invalid at 128 px"):
        validate_scales(eq, 128)  # the same sets at 128 px: 0.25 and 0.75 give 2x2 / 6x6 latents


@pytest.mark.parametrize("name", sorted(DIFFUSION))
def test_diffusion_512_parses_and_builds_on_meta(capsys, repo_root, monkeypatch, name):
    monkeypatch.setenv("TOKENIZER", "/nonexistent/tokenizer")
    monkeypatch.setenv("DINOV2", "/nonexistent/dinov2.pth")
    path = repo_root / f"configs/diffusion/{name}_512.yaml"
    cfg = _print_config(capsys, path, repo_root / "configs/trainer/ddp_bf16.yaml")
    assert (cfg["trainer"]["precision"], cfg["model"]["init_args"]["network_overrides"]) == (
        "bf16-mixed",
        {"input_size": 32},
    )
    base = yaml.safe_load((repo_root / f"configs/diffusion/{name}.yaml").read_text())
    diffs = _differences(base, yaml.safe_load(path.read_text()))
    allowed = {
        "model.init_args.network_overrides.input_size",
        "data.init_args.config.latent_root",
        "trainer.logger.init_args.name",
        "trainer.logger.init_args.version",
    }
    align = {k for k in diffs if k.endswith("init_args.image_size")}
    assert set(diffs) - align <= allowed, diffs
    assert diffs["model.init_args.network_overrides.input_size"] == (None, 32)
    spec = yaml.safe_load(path.read_text())["model"]
    module_path, cls = spec["class_path"].rsplit(".", 1)
    with torch.device("meta"):
        module = getattr(importlib.import_module(module_path), cls)(**spec["init_args"])
        net = module.net
    assert module.latent_shape == (32, 32, 32)
    # Fixed sin-cos / RoPE positions: the trained parameters are those of the 256 px network.
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == DIFFUSION[name]
    if name.startswith("reg"):  # DINOv2-B/14 at 448 px: 32x32 patch tokens, one per latent token
        assert [diffs[k] for k in align] == [(224, 448)]
        assert 448 // 14 == spec["init_args"]["network_overrides"]["input_size"]
    else:
        assert not align


def test_latent_cache_512_args_reach_the_cache_script(repo_root):
    from lightning_modules.commands.cache_latents import build_parser

    step = yaml.safe_load((repo_root / "configs/latent_cache/imagenet512.yaml").read_text())
    argv = [a for k, v in step["args"].items() for a in (f"--{k}", str(v))]
    args = build_parser().parse_args(["--data-root", "d", "--tokenizer", "t", "--out", "o", *argv])
    assert args.image_size == 512 and args.image_size // 16 == 32  # 32x32x32 latents
    proc = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(repo_root),
            "PY=echo",
            f"STEP_ARGS_PY={repo_root}/.venv/bin/python",
            "cache-latents-512",
            "DATA_ROOT=d",
            "TOKENIZER=t",
            "OUT=o",
            "BATCH=99",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = [x for x in proc.stdout.splitlines() if "lightning_modules cache-latents" in x][-1]
    # The YAML's options come last, so they win over the target's defaults.
    assert line.rstrip().endswith("--image-size 512 --batch-size 32 --stats-samples 10000"), proc.stdout + proc.stderr


def test_train_tokenizer_512_picks_the_512_config(repo_root):
    run = lambda *a: subprocess.run(  # noqa: E731
        ["make", "-s", "-C", str(repo_root), "PY=echo", *a], capture_output=True, text=True, timeout=120
    )
    paths = [
        f"{v}=/etc/hostname" for v in ("DATA_ROOT", "VFM_PATH", "DINO_PATH", "VGG_PATH", "FILTER_LIST", "INIT_CKPT")
    ]
    proc = run("train-tokenizer-512", "STAGE=2", *paths)
    assert "--config configs/tokenizer/stage2_ssim_fine_tuning_512.yaml" in proc.stdout, proc.stdout + proc.stderr
    assert "configs/trainer/ddp_bf16.yaml" in proc.stdout
    proc = run("train-tokenizer-512")
    assert proc.returncode != 0 and "STAGE=0|1|2|3" in proc.stderr
