"""Tokenizer training (`lightning_modules/tokenizer.py`): the four stage configs, hand-off, guard, resume.

Everything runs the real LightningCLI with the real stage YAMLs plus a tiny CPU override (debug
tokenizer / discriminator / PatchGAN, random LPIPS backbone, 64 px demo photographs, batch 2).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_cli, print_config

from callbacks.ema import find_ema
from lightning_modules.cli import VFMVAECLI
from vfmvae.tokenizer.stages import STAGES, steps_for_images

STAGE_FILES = {
    0: "stage0_strong_alignment.yaml",
    1: "stage1_weak_alignment.yaml",
    2: "stage2_ssim_fine_tuning.yaml",
    3: "stage3_patchgan_fine_tuning.yaml",
}
BATCH = 2


def _tiny_override(tmp: Path, data_root: Path, max_steps: int = 2, callbacks: list | None = None) -> Path:
    override = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "max_steps": max_steps,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": bool(callbacks),
            "callbacks": callbacks or [],
            "default_root_dir": str(tmp),
            "log_every_n_steps": 1,
        },
        "model": {
            "init_args": {
                "tokenizer": "debug",
                "tokenizer_overrides": {},
                "vfm_config": {"compute_dtype": "float32"},
                "discriminator": "debug",
                "patchgan": "debug",
                "lpips_random_backbone": True,
                "global_batch_size": BATCH,
                "export_dir": None,
                "seed": 3,
            }
        },
        "data": {
            "init_args": {
                "config": {
                    "root": str(data_root),
                    "resolution": 64,
                    "batch_size": BATCH,
                    "val_batch_size": BATCH,
                    "num_workers": 0,
                    "pin_memory": False,
                    "filter_keys_path": None,
                    "min_seen_for_bad_check": 10,
                    "demo": {"resolution": 64, "num_per_class": 1},
                }
            }
        },
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def _cli(config: Path, override: Path, *extra: str) -> VFMVAECLI:
    return build_cli(config, override, extra=extra)


def _snapshot(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone() for k, v in module.named_parameters()}


def _expected_trainable(stage: int, names: list[str]) -> set[str]:
    # Written from the spec's stage table, independently of the module lists in the code.
    prefixes = {
        0: ("head.", "decoder."),
        1: ("head.", "decoder."),
        2: ("decoder.",),
        3: tuple(f"decoder.synthesis.blocks.{i}." for i in (3, 4, 5)),
    }[stage]
    return {n for n in names if n.startswith(prefixes)}


def test_stage_configs_carry_the_paper_numbers(repo_root):
    for stage, fname in STAGE_FILES.items():
        cfg = yaml.safe_load((repo_root / "configs" / "tokenizer" / fname).read_text())
        args = cfg["model"]["init_args"]
        assert args["stage"] == stage and args["global_batch_size"] == 512
        assert float(args["lr"]) == {0: 1e-4, 1: 1e-4, 2: 5e-5, 3: 5e-5}[stage]
        images = {0: 20_000_000, 1: 20_000_000, 2: 1_000_000, 3: 3_000_000}[stage]
        assert cfg["trainer"]["max_steps"] == math.ceil(images / 512) == steps_for_images(images, 512)
        assert STAGES[stage].num_images == images
        assert args["betas"] == [0.0, 0.99] and args["ema_halflife_nimg"] == 160000.0
        data = cfg["data"]["init_args"]["config"]
        assert "filter_keys_path" in data and data["resolution"] == 256  # >= 256 px filter, set by FILTER_LIST
    # 20 M images at 512 per step: the spec's 39,063 steps.
    assert steps_for_images(20_000_000, 512) == 39_063


def test_paper_stage_trainable_counts_on_meta():
    from vfmvae.tokenizer import VFMVAE, get_config
    from vfmvae.tokenizer.stages import trainable_generator_modules

    with torch.device("meta"):
        model = VFMVAE(get_config("vfmvae-f16d32-siglip2", use_vf_projection=True))
    count = {
        s: sum(p.numel() for m in trainable_generator_modules(model, s).values() for p in m.parameters())
        for s in STAGES
    }
    # Measured on the official Generator (docs/design.md, "Tokenizer stages and losses"): train_all 139,770,680;
    # train_decoder 128,144,952; intended stage 3 31,827,994.
    assert count[0] == count[1] == 139_770_680
    assert count[2] == 128_144_952
    assert count[3] == 31_827_994


def test_every_stage_runs_two_steps_and_hands_off(tmp_path, repo_root):
    data_root = tmp_path / "data"
    override = _tiny_override(tmp_path, data_root)
    previous_ckpt, previous_nimg = None, 0
    for stage, fname in STAGE_FILES.items():
        extra = [f"--model.init_args.init_checkpoint={previous_ckpt}"] if previous_ckpt else []
        if stage < 3:  # 64 px: only EQ scale 1 fits the 4x4 latent; stage 3 keeps its EQ off
            extra.append("--model.init_args.equivariance=debug")
        cli = _cli(repo_root / "configs" / "tokenizer" / fname, override, *extra)
        model, trainer = cli.model, cli.trainer
        frozen_before = {**_snapshot(model.tokenizer.vfm, "vfm."), **_snapshot(model.projected_d.dino, "dino.")}
        if model.lpips is not None:
            frozen_before.update(_snapshot(model.lpips, "lpips."))
        trainer.fit(model, datamodule=cli.datamodule)

        names = [n for n, _ in model.tokenizer.named_parameters()]
        trainable = {n for n, p in model.tokenizer.named_parameters() if p.requires_grad}
        assert trainable == _expected_trainable(stage, names), f"stage {stage} trainable set"
        frozen_after = {**_snapshot(model.tokenizer.vfm, "vfm."), **_snapshot(model.projected_d.dino, "dino.")}
        if model.lpips is not None:
            frozen_after.update(_snapshot(model.lpips, "lpips."))
        for k, v in frozen_before.items():
            assert torch.equal(v, frozen_after[k]), f"stage {stage}: frozen {k} changed"
        assert trainer.global_step == 2, "global_step counts iterations (one D + one G update each)"
        assert model.stage_nimg == 2 * BATCH
        assert model.global_nimg == previous_nimg + 2 * BATCH, "global image counter carried over"
        assert find_ema(trainer).num_updates == 2 * (stage + 1), "EMA state carried over"
        if previous_ckpt:
            report = model.handoff_report
            assert report is not None and report.previous_stage == stage - 1 and not report.unexplained
            assert report.global_nimg == previous_nimg
            if stage == 2:
                assert any("vf_projection" in k for k in report.unexpected)
            if stage == 3:
                assert any(k.startswith("patchgan") for k in report.missing)
        assert (model.patchgan is not None) == (stage == 3)
        previous_ckpt = tmp_path / f"stage{stage}.ckpt"
        trainer.save_checkpoint(previous_ckpt)
        saved = torch.load(previous_ckpt, map_location="cpu", weights_only=False)
        assert not any(k.startswith(("tokenizer.vfm.", "projected_d.dino.", "lpips.")) for k in saved["state_dict"]), (
            "frozen networks must not be stored in checkpoints"
        )
        previous_nimg = model.global_nimg


class _NaNOnce:
    """Wraps `objective.generator_phase`; the first call returns a NaN L1 term (and total)."""

    def __init__(self, objective):
        self.inner, self.calls = objective.generator_phase, 0

    def __call__(self, *args, **kwargs):
        result = self.inner(*args, **kwargs)
        self.calls += 1
        if self.calls == 1:
            result.terms["l1"] = result.terms["l1"] * float("nan")
            result.total = result.total * float("nan")
        return result


def test_non_finite_loss_skips_the_step_and_counts_it(tmp_path, repo_root):
    override = _tiny_override(tmp_path, tmp_path / "data", max_steps=1)
    cli = _cli(
        repo_root / "configs" / "tokenizer" / STAGE_FILES[0],
        override,
        "--model.init_args.loss_overrides={lpips: 0.0}",
        "--model.init_args.equivariance=debug",
    )
    model = cli.model
    model.objective.generator_phase = _NaNOnce(model.objective)
    g_before = {k: v.detach().clone() for k, v in model.tokenizer.named_parameters() if v.requires_grad}
    d_before = [p.detach().clone() for p in model.d_params]
    cli.trainer.fit(model, datamodule=cli.datamodule)
    for k, p in model.tokenizer.named_parameters():
        if k in g_before:
            assert torch.equal(p, g_before[k]), f"{k} changed on a skipped step"
    opt_g = cli.trainer.optimizers[0]
    assert all(len(s) == 0 for s in opt_g.state.values()), "a skipped step must leave Adam's state untouched"
    assert model.guard_g.num_skipped == 1 and model.guard_d.num_skipped == 0
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.d_params)), "the D step was taken"
    assert cli.trainer.global_step == 1
    # Every logged tag follows the TensorBoard naming rule (callbacks/tb_layout.py).
    from callbacks.tb_layout import invalid_tags

    tags = list(cli.trainer.logged_metrics)
    assert "loss/G/total" in tags and "loss/D/total" in tags
    assert not invalid_tags(tags), invalid_tags(tags)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, repo_root):
    ckpt_cb = [
        {
            "class_path": "callbacks.atomic_checkpoint.AtomicModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 2, "save_top_k": -1},
        },
        {"class_path": "callbacks.sampler_state.SamplerStateCallback"},
    ]
    config = repo_root / "configs" / "tokenizer" / STAGE_FILES[0]
    lpips_off = ("--model.init_args.loss_overrides={lpips: 0.0}", "--model.init_args.equivariance=debug")
    full = _cli(config, _tiny_override(tmp_path, tmp_path / "data", max_steps=4, callbacks=ckpt_cb), *lpips_off)
    full.trainer.fit(full.model, datamodule=full.datamodule)
    mid = sorted((tmp_path / "ckpt").glob("*step=2*.ckpt"))
    assert len(mid) == 1, sorted((tmp_path / "ckpt").iterdir())

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    cb2 = copy.deepcopy(ckpt_cb)
    cb2[0]["init_args"]["dirpath"] = str(resumed_dir / "ckpt")
    res = _cli(config, _tiny_override(resumed_dir, tmp_path / "data", max_steps=4, callbacks=cb2), *lpips_off)
    res.trainer.fit(res.model, datamodule=res.datamodule, ckpt_path=str(mid[0]))

    a, b = full.model, res.model
    assert (a.global_nimg, a.stage_nimg, res.trainer.global_step) == (b.global_nimg, b.stage_nimg, 4)
    for (k, x), (_, y) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        assert torch.equal(x, y), f"weights differ after resume: {k}"
    ea, eb = find_ema(full.trainer).state_dict(), find_ema(res.trainer).state_dict()
    assert ea["num_updates"] == eb["num_updates"] == 4
    for k in ea["params"]:
        assert torch.equal(ea["params"][k], eb["params"][k]), f"EMA differs after resume: {k}"
    for oa, ob in zip(full.trainer.optimizers, res.trainer.optimizers):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for key in sa[i]:
                assert torch.equal(sa[i][key], sb[i][key]), f"optimizer state {i}.{key} differs after resume"


def test_reconstruction_grid_layout():
    from callbacks.image_grid import reconstruction_grid

    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    recon = images.float() / 127.5 - 1  # a perfect reconstruction in [-1, 1]
    multiscale = {4: torch.full((2, 3, 4, 4), 1.0), 2: torch.full((2, 3, 2, 2), -1.0)}
    grid = reconstruction_grid(images, recon, multiscale)
    pad, side = 2, 8 + 2  # image_grid: 2 px gaps, tiles row-major
    assert grid.dtype == torch.uint8 and grid.shape == (3, pad + 2 * side, pad + 4 * side)

    def tile(row: int, col: int) -> torch.Tensor:
        return grid[:, pad + row * side : pad + row * side + 8, pad + col * side : pad + col * side + 8]

    assert torch.equal(tile(1, 0), images[1]) and torch.equal(tile(0, 0), images[0])
    assert (tile(0, 1).int() - images[0].int()).abs().max() <= 1  # [-1, 1] -> uint8 truncates
    assert torch.all(tile(1, 2) == 255) and torch.all(tile(0, 3) == 0)  # scales: nearest-upsampled, clamped
    with pytest.raises(ValueError, match="must be equal"):
        reconstruction_grid(images, recon[:1], multiscale)


@pytest.mark.parametrize("stage", sorted(STAGE_FILES))
def test_paper_stage_configs_parse_with_the_gpu_trainer(stage, repo_root, capsys):
    # Paper-scale runs are checked by parsing (conventions: never run them in tests).
    configs = repo_root / "configs"
    printed = print_config(capsys, configs / "tokenizer" / STAGE_FILES[stage], configs / "trainer" / "ddp_bf16.yaml")
    assert printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["trainer"]["strategy"]["init_args"]["find_unused_parameters"] is False
    assert printed["model"]["init_args"]["stage"] == stage


def test_make_train_tokenizer_names_missing_variables(repo_root):
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make not installed")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DATA_ROOT", "VFM_PATH", "CONFIG", "STAGE")}
    for args, needle in (
        (["STAGE=0"], "DATA_ROOT is not set"),
        ([], "set STAGE=0|1|2|3"),
        (
            [
                "STAGE=1",
                f"DATA_ROOT={repo_root}",
                f"VFM_PATH={repo_root}",
                f"DINO_PATH={repo_root}",
                f"VGG_PATH={repo_root}",
                f"FILTER_LIST={repo_root}",
            ],
            "INIT_CKPT is not set",
        ),
    ):
        proc = subprocess.run(
            ["make", "-s", "-C", str(repo_root), "train-tokenizer", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
        assert "CONFIG=configs/tokenizer/demo.yaml" in proc.stderr
