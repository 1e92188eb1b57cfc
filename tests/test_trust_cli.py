"""The CLI: one-line errors, one folder per run, resume with changed arguments, `--ckpt_path last`.

Each case failed before the fix: a 60-90-line traceback (negative lr, unknown preset, wrong network name,
batch not divisible by the device count, `${TOKENIZER}` unset, a truncated `last.ckpt`), silence (a duplicated
YAML key kept its last value; a changed lr on resume was replaced by the checkpoint's), or a second run
writing into the first one's folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.cli import main
from lightning_modules.run_folders import checkpoint_folders, claim_fresh_version, logger_folders, resolve_resume
from vfmvae.utils.checkpoint_io import atomic_save


def _error_line(capsys, *args: str) -> str:
    """Run the CLI, expect exit status 2; the error is the last stderr line and no traceback is printed."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("config error"), line
    return line


@pytest.fixture
def demo(repo_root, tmp_path, monkeypatch):
    """The demo diffusion config on a 1-image-per-class cache under tmp_path."""
    monkeypatch.chdir(repo_root)
    return [
        "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"),
        f"--trainer.logger.init_args.save_dir={tmp_path / 'tb'}", f"--data.init_args.root={tmp_path / 'demo'}",
        "--data.init_args.num_per_class=1", "--model.init_args.global_batch_size=4",
        "--trainer.enable_progress_bar=false", "--trainer.max_steps=1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.init_args.lr=-1e-4", "config error at model.init_args.lr: need lr > 0"),
        ("--model.init_args.preset=nonexistent", "config error at model.init_args.preset: unknown lightningdit preset"),
        ("--model.init_args.network=dit", "config error at model.init_args.network: unknown "),
        ("--model.init_args.transport=foo", "config error at model.init_args.transport: unknown transport preset"),
        ("--checkpoint.best_mode=up", "config error: wrong type for 'checkpoint.best_mode': expected one of"),
    ],
)
def test_refused_values_are_one_line_naming_the_key(demo, capsys, override, expected):
    assert _error_line(capsys, *demo, override).startswith(expected)


def test_batch_not_divisible_by_the_processes_is_reported_before_they_start(demo, capsys):
    line = _error_line(capsys, *demo, "--model.init_args.global_batch_size=6", "--trainer.devices=4")
    assert line.startswith("config error at model.init_args.global_batch_size: 6 images per step do not split")


def test_duplicate_yaml_key_is_refused_with_key_file_and_lines(demo, capsys, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    lr: 1.0e-3\n    seed: 1\n    lr: 5.0e-4\n")
    line = _error_line(capsys, *demo, "--config", str(extra))
    assert line == (
        f"config error: duplicate key 'model.init_args.lr' in {extra} (lines 3 and 5); "
        "YAML would keep only the last value: delete one of them"
    )
    line = _error_line(capsys, *demo, '--model.init_args.network_overrides={"input_size": 4, "input_size": 8}')
    assert "duplicate key 'input_size' in a command-line value" in line


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from datamodules.demo_latents import build_demo_latent_cache

    return build_demo_latent_cache(tmp_path_factory.mktemp("cache"), num_per_class=1, resolution=64)


def test_unset_tokenizer_variable_names_the_callback_argument(repo_root, tmp_path, capsys, monkeypatch, small_cache):
    monkeypatch.chdir(repo_root)
    monkeypatch.delenv("TOKENIZER", raising=False)
    line = _error_line(
        capsys, "fit", "--config", "configs/diffusion/lightningdit_xl1_vfmvae.yaml", "--config",
        "configs/trainer/cpu.yaml", "--model.init_args.preset=debug", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.init_args.config.latent_root={small_cache}", "--data.init_args.config.num_workers=0",
    )  # fmt: skip
    assert line.startswith("config error at trainer.callbacks[3].init_args.tokenizer: "), line
    assert "needs the environment variable TOKENIZER" in line


def test_missing_or_truncated_checkpoint_is_one_line(demo, capsys, tmp_path):
    missing = tmp_path / "nope.ckpt"
    assert _error_line(capsys, *demo, f"--ckpt_path={missing}") == (
        f"config error at ckpt_path: checkpoint not found: {missing}"
    )
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    assert _error_line(capsys, *demo, f"--ckpt_path={weights}", "--trust-pickle").startswith(
        f"config error at ckpt_path: {weights} is not a Lightning training checkpoint"
    )
    from vfmvae.utils.safe_load import pickles_trusted

    assert not pickles_trusted()  # --trust-pickle lasted for that run only
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    atomic_save({"global_step": 1}, folder / "step=000000001.ckpt")
    broken = folder / "step=000000002.ckpt"
    broken.write_bytes(b"PK\x03\x04 cut short")
    assert _error_line(capsys, *demo, f"--ckpt_path={broken}") == (
        f"config error at ckpt_path: {broken} is truncated or not a checkpoint (no zip central directory); "
        f"the newest complete checkpoint there is {(folder / 'step=000000001.ckpt').resolve()}"
    )


# ------------------------------------------------------------------------------ run folders and resume, unit level
def _config(tmp_path: Path, version="run") -> dict:
    return {
        "trainer": {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "exp", "version": version},
            }
        }
    }


def _ckpt(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"global_step": step}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_ckpt_path_last_takes_the_newest_complete_checkpoint_of_the_run_and_its_siblings(tmp_path):
    config = _config(tmp_path)
    assert resolve_resume("last", config).checkpoint is None  # nothing yet: a new run, said in a note
    run = tmp_path / "exp" / "run" / "checkpoints"
    _ckpt(run / "last.ckpt", 5, 1000)
    step10 = _ckpt(run / "step=000000010.ckpt", 10, 2000)  # written after last.ckpt: Lightning's "last" ignored it
    assert resolve_resume("last", config).checkpoint == str(step10.resolve())
    sibling = _ckpt(tmp_path / "exp" / "run-1" / "checkpoints" / "last.ckpt", 3, 3000)
    assert resolve_resume("last", config).checkpoint == str(sibling.resolve())
    assert [p.parent.name for p in checkpoint_folders(config)] == ["run", "run-1"]
    # An explicit last.ckpt that is truncated falls back to the newest complete checkpoint beside it.
    broken = run / "last.ckpt"
    broken.write_bytes(broken.read_bytes()[:50])
    decision = resolve_resume(str(broken), config)
    assert decision.checkpoint == str(step10.resolve())
    assert decision.notes == [f"{broken} is truncated or not a checkpoint (no zip central directory): resuming the newest complete "
                              f"checkpoint {step10.resolve()}"]  # fmt: skip


def test_a_fresh_run_never_reuses_a_folder_that_holds_anything(tmp_path):
    (folder,) = logger_folders(_config(tmp_path))
    assert claim_fresh_version(folder) is None  # no folder yet
    (tmp_path / "exp" / "run").mkdir(parents=True)
    assert claim_fresh_version(folder) is None  # empty: free
    (tmp_path / "exp" / "run" / "config.yaml").write_text("x")
    assert claim_fresh_version(folder) == "run-1"
    (tmp_path / "exp" / "run-1").mkdir()
    (tmp_path / "exp" / "run-1" / "events").write_text("x")
    assert claim_fresh_version(folder) == "run-2"
    (auto,) = logger_folders(_config(tmp_path, version=None))
    assert claim_fresh_version(auto) is None  # Lightning's own version_N


# ------------------------------------------------------------------------------ end to end (three 1-2 step fits)
@pytest.mark.slow
def test_fresh_runs_get_their_own_folder_and_resume_uses_this_runs_lr(demo, tmp_path, caplog):
    """Run A (2 steps), run B fresh with the same YAML, then `--ckpt_path last` with a changed lr.

    Before: B replaced A's config.yaml and mixed event files into A's folder; `last` took A's truncated
    last.ckpt (traceback); the resumed optimiser ran with the checkpoint's lr 1e-3.
    """
    main([*demo, "--trainer.max_steps=2"])
    root = tmp_path / "tb" / "demo_diffusion"
    run_a = root / "demo_lightningdit"
    config_a = (run_a / "config.yaml").read_text()
    events_a = sorted(p.name for p in run_a.glob("events.out.tfevents*"))
    with caplog.at_level(logging.WARNING, logger="lightning_modules.cli"):
        main(demo)
    run_b = root / "demo_lightningdit-1"
    assert f"{run_a} holds another run: this run writes to {run_b}" in caplog.text
    assert (run_a / "config.yaml").read_text() == config_a
    assert sorted(p.name for p in run_a.glob("events.out.tfevents*")) == events_a
    assert sorted(p.name for p in (run_a / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run_b / "config.yaml").is_file() and (run_b / "checkpoints" / "last.ckpt").is_file()

    # A's last.ckpt truncated by a copy that did not finish; its intact copy is the newest complete checkpoint.
    ckpts = run_a / "checkpoints"
    shutil.copy(ckpts / "last.ckpt", ckpts / "step=000000002.ckpt")
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:1000])
    (ckpts / ".last.ckpt.x1y2z3.tmp").write_bytes(b"partial write")
    for name, mtime in (("step=000000002.ckpt", 2000), ("last.ckpt", 3000)):
        os.utime(ckpts / name, (mtime, mtime))
    os.utime(run_b / "checkpoints" / "last.ckpt", (1000, 1000))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cli = main([*demo, "--trainer.max_steps=3", "--ckpt_path=last", "--model.init_args.lr=1e-4"])
    assert cli.trainer.ckpt_path == str((ckpts / "step=000000002.ckpt").resolve())
    assert cli.trainer.global_step == 3 and cli.trainer.log_dir == str(run_a)
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 1e-4
    assert not (ckpts / ".last.ckpt.x1y2z3.tmp").exists()
    changed = [m for m in caplog.messages if m.startswith("resume: model")]
    assert changed == ["resume: model.init_args.lr: 0.001 (checkpoint) -> 0.0001 (this run)"]
    assert "resume: optimizer 0 group 0 lr: 0.001 (checkpoint) -> 0.0001 (this run)" in caplog.text
    assert f"--ckpt_path last: skipped {(ckpts / 'last.ckpt').resolve()}: truncated" in caplog.text
    resumed = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 3 and resumed["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4
    assert yaml.safe_load((run_a / "config.resume-step000000002.yaml").read_text())["model"]["init_args"]["lr"] == 1e-4
    assert (run_a / "config.yaml").read_text() == config_a
    assert not (root / "demo_lightningdit-2").exists()
