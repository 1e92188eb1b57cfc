"""`make demo VFM=<family>`: the demo's tokenizer runs on a tiny random VFM of each family (`<size>+<family>`,
configs/demo/vfm_<family>.yaml), and a VFM that cannot change resolution is refused the input-branch equivariance."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import stacked_yaml

from lightning_modules.tokenizer import TokenizerModule
from vfmvae.demo import available_sizes, load_size, run_configs, size_fingerprint
from vfmvae.demo.size import split_name, vfm_families
from vfmvae.vfm import EVAVFM, MAEVFM, HFDinov2VFM, Qwen25VLVisionVFM, SiglipVFM

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


WRAPPERS = {"siglip2": SiglipVFM, "dinov2": HFDinov2VFM, "eva": EVAVFM, "mae": MAEVFM, "qwen2_5_vl": Qwen25VLVisionVFM}


def test_every_official_family_has_a_demo_and_names_are_checked():
    assert vfm_families(CONFIGS) == ["siglip2", "dinov2", "eva", "mae", "qwen2_5_vl"]
    assert {"demo+dinov2", "ci+mae", "debug+qwen2_5_vl"} <= set(available_sizes(CONFIGS))
    assert split_name(CONFIGS, "ci") == ("ci", "siglip2") and split_name(CONFIGS, "demo+eva") == ("demo", "eva")
    assert load_size(CONFIGS, "ci+mae").vfm_family == "mae" and load_size(CONFIGS, "ci").vfm_family == "siglip2"
    with pytest.raises(ValueError, match="unknown demo VFM family 'clip'.*make demo VFM="):
        load_size(CONFIGS, "demo+clip")
    with pytest.raises(ValueError, match="unknown demo size 'huge'"):
        load_size(CONFIGS, "huge+dinov2")
    # SigLIP2 is the default: no overlay, the same settings (and output folder fingerprint) as the plain size.
    assert run_configs(CONFIGS, "demo+siglip2", "tokenizer_stage0") == run_configs(CONFIGS, "demo", "tokenizer_stage0")
    assert size_fingerprint(CONFIGS, "demo+siglip2") == size_fingerprint(CONFIGS, "demo")
    assert size_fingerprint(CONFIGS, "demo+dinov2") != size_fingerprint(CONFIGS, "demo")


@pytest.mark.parametrize("family", ["siglip2", "dinov2", "eva", "mae", "qwen2_5_vl"])
def test_both_tokenizer_stages_build_the_family_and_encode_to_the_demo_latent(family):
    stage0, stage2 = (
        stacked_yaml(run_configs(CONFIGS, f"ci+{family}", run)) for run in ("tokenizer_stage0", "tokenizer_stage2")
    )
    args0, args2 = stage0["model"]["init_args"], stage2["model"]["init_args"]
    # Stage 2 loads stage 0's checkpoint: the same tokenizer and the same frozen VFM.
    assert (args0["tokenizer"], args0.get("tokenizer_overrides")) == (
        args2["tokenizer"],
        args2.get("tokenizer_overrides"),
    )
    for run in ("reg",):  # the diffusion side is the same for every family (8x4x4 latents)
        assert run_configs(CONFIGS, f"ci+{family}", run) == run_configs(CONFIGS, "ci", run)
    module = TokenizerModule(**{**args0, "export_dir": None})
    vfm = module.tokenizer.vfm
    # Stage 0's VF loss aligns with the final output (-1); a family whose layers leave it out trains without it.
    assert -1 in module.tokenizer.cfg.vfm_layers or module.loss_config.vf_base == 0.0
    assert type(vfm) is WRAPPERS[family]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = module.tokenizer(x)
    assert out.posterior.mean.shape == (2, 8, 4, 4) and out.image.shape == (2, 3, 64, 64)
    assert [f.shape[1] for f in out.vfm_features] == [64] * 3  # an 8x8 token grid, as the tiny SigLIP's
    # The losses resize with the VFM's interpolation (official VFM2INTERPOLATION).
    assert module.loss_config.multiscale.interpolation == vfm.config.interpolation
    assert module.loss_config.equivariance.interpolation == vfm.config.interpolation


def test_mae_refuses_input_branch_equivariance_but_takes_the_latent_branch():
    args = yaml.safe_load((CONFIGS / "tokenizer" / "demo.yaml").read_text())["model"]["init_args"]
    args["tokenizer_overrides"] = yaml.safe_load((CONFIGS / "demo" / "vfm_mae.yaml").read_text())["model"]["init_args"][
        "tokenizer_overrides"
    ]
    args = {**args, "export_dir": None}
    with pytest.raises(ValueError, match="the mae VFM cannot change resolution .*turn it off"):
        TokenizerModule(**{**args, "equivariance": "res-128"})  # input scales 0.5: the VFM would see 64 px
    assert TokenizerModule(**{**args, "equivariance": "debug"}).loss_config.equivariance.input_scales == ()
    # A family with dynamic resolution takes the same setting.
    dino = yaml.safe_load((CONFIGS / "demo" / "vfm_dinov2.yaml").read_text())["model"]["init_args"]
    with pytest.raises(ValueError, match="invalid at 64 px"):  # refused by the scale check, not the VFM
        TokenizerModule(**{**args, **dino, "equivariance": "res-128"})


@pytest.mark.slow
def test_make_demo_vfm_runs_every_phase_on_dinov2(tmp_path):
    """`make demo VFM=dinov2` at the smallest size (the self-checks are only reported at this size)."""
    out = tmp_path / "demo"
    cmd = ["make", "-s", "-C", str(REPO), "demo", "SIZE=debug", "VFM=dinov2", f"OUT={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["size_config"]["vfm_family"] == "dinov2"
    assert metrics["latents"]["latent_shape"] == [8, 4, 4]
    saved = yaml.safe_load(next((out / "tokenizer" / "tb").rglob("stage0_strong_alignment/config.yaml")).read_text())
    assert saved["model"]["init_args"]["tokenizer_overrides"]["vfm_name"] == "debug-dinov2"
    assert "tokenizer VFM family dinov2" in (out / "summary.txt").read_text()
