"""The paper's VFM-comparison recipe (configs/vfm_comparison/<family>/): each family's configs differ from the main
recipe only where the family says so, parse with the ddp_bf16 trainer, build at paper size on the `meta` device with
their parameter counts, and `make vfm-comparison` runs each step with them."""

from __future__ import annotations

import importlib
import subprocess

import pytest
import torch
import yaml

from lightning_modules.cli import main
from vfmvae.tokenizer import VFMVAE
from vfmvae.tokenizer.config import get_config

FAMILIES = {
    "siglip2": "vfmvae-f16d32-siglip2-large",
    "dinov2": "vfmvae-f16d32-dinov2-large",
    "eva": "vfmvae-f16d32-eva02-large",
}
STAGES = ("stage0_strong_alignment", "stage1_weak_alignment", "stage2_ssim_fine_tuning", "stage3_patchgan_fine_tuning")


def _vit_l14_dinov2_count(tokens: int = 37 * 37 + 1) -> int:
    """DINOv2-L/14 (transformers Dinov2Model) by hand: patch embedding, CLS + mask token, position table, 24 blocks
    (2 LayerNorms, qkv, proj, 2 LayerScales, MLP 4096), final LayerNorm."""
    d, mlp = 1024, 4096
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * mlp + mlp) + (mlp * d + d)
    return (3 * 14 * 14 * d + d) + 2 * d + tokens * d + 24 * block + 2 * d


# Frozen encoders without their unused heads: SigLIP2 (tests/test_tokenizer_model.py), EVA-02-L (configs/vfm/eva02_large_clip_336.yaml).
VFM_COUNTS = {"siglip2": 304_147_456, "dinov2": _vit_l14_dinov2_count(), "eva": 303_645_632}
# The trained parts are the paper's for every family (same widths; no legacy noise strengths: 38 fewer).
TRAINED = {"head": 11_592_960, "lift": 1_907_328, "mapping": 525_312, "synthesis": 125_712_312 - 38}


def _differences(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = {}
        for k in set(a) | set(b):
            out.update(_differences(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = {}
        for i, (x, y) in enumerate(zip(a, b)):
            out.update(_differences(x, y, f"{prefix}{i}."))
        return out
    return {} if a == b else {prefix[:-1]: (a, b)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tokenizer_stages_are_the_main_recipe_with_the_family_preset(repo_root, family):
    for stage in STAGES:
        main_cfg = yaml.safe_load((repo_root / f"configs/tokenizer/{stage}.yaml").read_text())
        ours = yaml.safe_load((repo_root / f"configs/vfm_comparison/{family}/tokenizer_{stage}.yaml").read_text())
        assert _differences(main_cfg, ours) == {
            "model.init_args.tokenizer": ("vfmvae-f16d32-siglip2", FAMILIES[family]),
            "model.init_args.export_dir": (
                f"outputs/tokenizer/export/{stage}",
                f"outputs/vfm_comparison/{family}/tokenizer/export/{stage}",
            ),
            "trainer.logger.init_args.save_dir": (
                "outputs/tokenizer/tb",
                f"outputs/vfm_comparison/{family}/tokenizer/tb",
            ),
        }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_paper_size_tokenizer_on_meta(family):
    with torch.device("meta"):
        model = VFMVAE(get_config(FAMILIES[family], legacy=False))
        out = model(torch.empty(1, 3, 256, 256))
    counts = model.parameter_counts()
    assert counts["vfm"] == VFM_COUNTS[family]
    assert {k: counts[k] for k in TRAINED} == TRAINED
    assert out.posterior.mean.shape == (1, 32, 16, 16) and out.image.shape == (1, 3, 256, 256)
    assert [tuple(f.shape) for f in out.vfm_features] == [(1, 32 * 32, 1024)] * 3  # a 32x32 token grid each


def test_lightningdit_l1_100k_parses_and_builds(capsys, repo_root, monkeypatch):
    monkeypatch.setenv("TOKENIZER", "/nonexistent/tokenizer")
    path = repo_root / "configs/vfm_comparison/dinov2/lightningdit_l1_100k.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(path),
                "--config",
                str(repo_root / "configs/trainer/ddp_bf16.yaml"),
                "--print_config",
            ]
        )
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    cfg = yaml.safe_load(out)
    assert (cfg["trainer"]["max_steps"], cfg["trainer"]["precision"]) == (100_000, "bf16-mixed")
    assert cfg["model"]["init_args"]["preset"] == "LightningDiT-L/1"
    main_cfg = yaml.safe_load((repo_root / "configs/diffusion/lightningdit_xl1_vfmvae.yaml").read_text())
    for family in FAMILIES:
        ours = yaml.safe_load((repo_root / f"configs/vfm_comparison/{family}/lightningdit_l1_100k.yaml").read_text())
        assert set(_differences(main_cfg, ours)) == {
            "trainer.max_steps",
            "trainer.logger.init_args.save_dir",
            "trainer.logger.init_args.name",
            "model.init_args.preset",
            "model.init_args.transport_overrides.uniform_from_step",
            "data.init_args.config.latent_root",
        }
        spec = ours["model"]
        module_path, cls = spec["class_path"].rsplit(".", 1)
        with torch.device("meta"):
            module = getattr(importlib.import_module(module_path), cls)(**spec["init_args"])
        net = module.net.config
        assert (net.depth, net.hidden_size, net.patch_size, module.latent_shape) == (24, 1024, 1, (32, 16, 16))
        # Our LightningDiT class (its XL/1 count equals the official class's, tests/test_diffusion.py).
        assert sum(p.numel() for p in module.net.parameters() if p.requires_grad) == 457_893_888
        assert module.transport.uniform_from_step is None


def _make(repo_root, *args):
    return subprocess.run(
        ["make", "-s", "-C", str(repo_root), "PY=echo", f"STEP_ARGS_PY={repo_root}/.venv/bin/python", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_vfm_comparison_runs_each_step_with_the_family_configs(repo_root):
    paths = [f"{v}=/etc/hostname" for v in ("DATA_ROOT", "VFM_PATH", "DINO_PATH", "VGG_PATH", "FILTER_LIST")]
    out = _make(repo_root, "vfm-comparison", "VFM=eva", "STEP=tokenizer", "STAGE=0", *paths).stdout
    assert "fit --config configs/vfm_comparison/eva/tokenizer_stage0_strong_alignment.yaml" in out
    assert "--config configs/trainer/ddp_bf16.yaml" in out and "--model.init_args.vfm_pretrained=/etc/hostname" in out
    out = _make(repo_root, "vfm-comparison", "VFM=dinov2", "STEP=cache", "DATA_ROOT=d", "TOKENIZER=t", "OUT=o").stdout
    assert "lightning_modules cache-latents --data-root d --tokenizer t --out o" in out and "--image-size 256" in out
    out = _make(repo_root, "vfm-comparison", "VFM=dinov2", "STEP=diffusion", "LATENTS=/tmp", "TOKENIZER=t").stdout
    assert "fit --config configs/vfm_comparison/dinov2/lightningdit_l1_100k.yaml" in out
    out = _make(repo_root, "vfm-comparison", "VFM=siglip2", "STEP=sample", "CKPT=c", "TOKENIZER=t").stdout
    assert "lightning_modules sample --ckpt c" in out and "--cfg-scale 1.0" in out
    out = _make(repo_root, "vfm-comparison", "VFM=siglip2", "STEP=evaluate", "SAMPLES=s.npz", "REF=r.npz").stdout
    assert "lightning_modules evaluate s.npz r.npz" in out and "--num-samples 50000 --pr-distance-dtype float16" in out
    for bad, message in ((("VFM=mae", "STEP=cache"), "set VFM to one of: dinov2 eva siglip2"), (("VFM=eva",), "STEP=")):
        proc = _make(repo_root, "vfm-comparison", *bad)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_step_yamls_name_options_their_scripts_accept(repo_root):
    from lightning_modules.commands.cache_latents import build_parser as cache_parser
    from lightning_modules.commands.sample import parse_args as sample_args
    from vfmvae.commands.evaluate import build_parser as evaluate_parser

    cache_args = cache_parser().parse_args

    for family in FAMILIES:
        folder = repo_root / f"configs/vfm_comparison/{family}"
        steps = {
            name: yaml.safe_load((folder / f"{name}.yaml").read_text())["args"]
            for name in ("cache_latents", "sample", "evaluate")
        }
        flags = {name: [a for k, v in args.items() for a in (f"--{k}", str(v))] for name, args in steps.items()}
        assert (
            cache_args(["--data-root", "d", "--tokenizer", "t", "--out", "o", *flags["cache_latents"]]).image_size
            == 256
        )
        assert sample_args(["--ckpt", "c", "--tokenizer", "t", "--out", "o", *flags["sample"]]).cfg_scale == 1.0
        parsed = evaluate_parser().parse_args(["s", "r", *flags["evaluate"]])
        assert (parsed.num_samples, parsed.pr_distance_dtype) == (50_000, "float16")
