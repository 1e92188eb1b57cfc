"""Trainer/strategy YAMLs (docs/scale.md, "1. Strategies (`configs/trainer/`)"): parsed by the real CLI,
pieces instantiated (never run on GPU); the checkpoint policy (keep the last K, "best" only with a metric); one test per config error message."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import print_config
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.atomic_checkpoint import AtomicModelCheckpoint
from lightning_modules.cli import CheckpointPolicy, ConfigError, apply_checkpoint_policy, explain_parse_error, main


def _instantiate(spec):
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def _cli_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


# ---------------------------------------------------------------------- strategy YAMLs
@pytest.mark.parametrize("run", ["lightningdit_xl1_vfmvae.yaml", "reg_sitxl1_vfmvae.yaml"])
def test_fsdp_bf16_stacks_on_the_paper_diffusion_runs(capsys, repo_root, run):
    cfg = print_config(capsys, repo_root / "configs/diffusion" / run, repo_root / "configs/trainer/fsdp_bf16.yaml")
    t = cfg["trainer"]
    assert (t["accelerator"], t["precision"]) == ("gpu", "bf16-mixed")
    assert t["strategy"]["class_path"] == "lightning_modules.parallel.FSDP2Strategy"
    strategy = _instantiate(t["strategy"])
    assert isinstance(strategy, ModelParallelStrategy)  # FSDP2, the path the CPU twin tests
    assert strategy._save_distributed_checkpoint is True
    # The run's own callbacks survive the stacking (a trainer YAML never replaces the list).
    names = [c["class_path"].rsplit(".", 1)[1] for c in t["callbacks"]]
    assert {"EMACallback", "AtomicModelCheckpoint", "SamplerStateCallback"} <= set(names)
    assert cfg["checkpoint"]["keep_last"] == 3 and cfg["checkpoint"]["best_metric"] is None
    assert cfg["model"]["init_args"]["global_batch_size"] == 1024


def test_fsdp_cpu_twin_is_the_same_strategy(capsys, repo_root):
    gpu = print_config(capsys, repo_root / "configs/diffusion/demo.yaml", repo_root / "configs/trainer/fsdp_bf16.yaml")
    cpu = print_config(capsys, repo_root / "configs/diffusion/demo.yaml", repo_root / "configs/trainer/fsdp_cpu.yaml")
    assert gpu["trainer"]["strategy"]["class_path"] == cpu["trainer"]["strategy"]["class_path"]
    assert (cpu["trainer"]["accelerator"], cpu["trainer"]["precision"], cpu["trainer"]["devices"]) == (
        "cpu",
        "32-true",
        2,
    )


def test_ddp_bf16_stacks_on_a_tokenizer_stage(capsys, repo_root):
    stage0 = repo_root / "configs/tokenizer/stage0_strong_alignment.yaml"
    ddp = repo_root / "configs/trainer/ddp_bf16.yaml"
    if not stage0.is_file() or not ddp.is_file():
        pytest.skip("tokenizer stage configs not in the tree yet")
    cfg = print_config(capsys, stage0, ddp)
    t = cfg["trainer"]
    assert (t["accelerator"], t["precision"], t["use_distributed_sampler"]) == ("gpu", "bf16-mixed", False)
    strategy = _instantiate(t["strategy"])
    assert isinstance(strategy, DDPStrategy) and not isinstance(strategy, ModelParallelStrategy)
    assert strategy._ddp_kwargs.get("find_unused_parameters") is False
    assert cfg["checkpoint"]["keep_last"] == 3 and cfg["checkpoint"]["best_metric"] is None


def test_multinode_slurm_stacks_and_instantiates(capsys, repo_root):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    cfg = print_config(
        capsys,
        repo_root / "configs/diffusion/reg_sitxl1_vfmvae.yaml",
        repo_root / "configs/trainer/fsdp_bf16.yaml",
        repo_root / "configs/trainer/multinode_slurm.yaml",
        extra=("--trainer.num_nodes", "8"),
    )
    t = cfg["trainer"]
    assert (t["num_nodes"], t["devices"]) == (8, 8)
    assert t["strategy"]["class_path"].endswith("FSDP2Strategy")
    env = _instantiate(t["plugins"][0])
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue
    # sbatch scripts and the torchrun example refer to configs that exist.
    for script in [*sorted((repo_root / "scripts/slurm").glob("*.sbatch")), repo_root / "scripts/torchrun_example.sh"]:
        text = script.read_text()
        for ref in set(re.findall(r"configs/[\w/.-]+\.yaml", text)):
            assert (repo_root / ref).is_file(), f"{script.name} refers to a missing {ref}"


# ---------------------------------------------------------------------- checkpoint policy
class _Toy(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(self.global_step % 3))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _toy_loader():
    return DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)


def test_keep_last_k_replaces_the_periodic_checkpoint(tmp_path):
    run_cb = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1)
    trainer = Trainer(
        default_root_dir=tmp_path, max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[run_cb],
    )  # fmt: skip
    added = apply_checkpoint_policy(trainer, CheckpointPolicy(keep_last=2))
    assert run_cb not in trainer.callbacks and len(added) == 1 and isinstance(added[0], AtomicModelCheckpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(_Toy(), train_dataloaders=_toy_loader())
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["last.ckpt", "step=000000005.ckpt", "step=000000006.ckpt"]  # cadence kept, newest 2 + last


def test_best_checkpoint_only_with_a_metric(tmp_path):
    def trainer():
        return Trainer(
            default_root_dir=tmp_path, max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3)],
        )  # fmt: skip

    t = trainer()
    apply_checkpoint_policy(t, CheckpointPolicy(keep_last=1))
    assert not [cb for cb in t.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor not in (None, "step")]
    t = trainer()
    added = apply_checkpoint_policy(t, CheckpointPolicy(keep_last=1, best_metric="val/score", best_mode="max"))
    best = added[1]
    assert (best.monitor, best.mode, best.save_top_k) == ("val/score", "max", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(_Toy(), train_dataloaders=_toy_loader(), val_dataloaders=_toy_loader())
    assert float(best.best_model_score) == 2.0  # validation after steps 2, 4, 6 logs 2, 1, 0
    assert Path(best.best_model_path).name == "best-step=000000002.ckpt"
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith("best")) == [
        "last.ckpt",
        "step=000000006.ckpt",
    ]


def test_checkpoint_policy_rejects_bad_values():
    with pytest.raises(ConfigError, match="checkpoint.keep_last"):
        CheckpointPolicy(keep_last=0)
    with pytest.raises(ConfigError, match="checkpoint.every_n_train_steps"):
        CheckpointPolicy(keep_last=2, every_n_train_steps=0)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="enable_checkpointing"):
        apply_checkpoint_policy(trainer, CheckpointPolicy(keep_last=2), enable_checkpointing=False)


# ---------------------------------------------------------------------- config errors, one per kind
def test_error_unknown_key_names_the_key_and_a_close_match(tmp_path, capsys, repo_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    global_batch_sise: 16\n")
    line = _cli_error(capsys, "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"), "--config", str(bad))
    assert line == (
        "config error: unknown key 'model.init_args.global_batch_sise' (lightning_modules.diffusion.DiffusionModule "
        "has no argument 'global_batch_sise'); did you mean 'global_batch_size'?"
    )
    line = _cli_error(
        capsys, "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"), "--trainer.max_stepz=3"
    )
    assert line == "config error: unknown key 'trainer.max_stepz'; did you mean 'max_steps'?"


def test_error_wrong_type_names_the_key_and_types(capsys, repo_root):
    line = _cli_error(
        capsys, "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"), "--model.init_args.lr=fast"
    )
    assert line == "config error: wrong type for 'model.init_args.lr': expected float, got 'fast'"
    line = _cli_error(
        capsys, "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"), "--checkpoint.keep_last=many"
    )
    assert "'checkpoint.keep_last'" in line and "'many'" in line


def _tiny_diffusion_override(tmp_path: Path, **model_args) -> Path:
    override = {
        "trainer": {"max_steps": 1, "logger": False, "callbacks": [], "enable_checkpointing": False,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": {"init_args": {"global_batch_size": 4, **model_args}},
        "data": {"init_args": {"root": str(tmp_path / "demo"), "num_per_class": 1, "batch_size": 4}},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def test_error_missing_weights_folder_names_the_key_and_path(tmp_path, capsys, repo_root):
    missing = str(tmp_path / "no_such_dinov2")
    override = _tiny_diffusion_override(tmp_path)
    line = _cli_error(
        capsys, "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"), "--config", str(override),
        "--trainer.callbacks+=callbacks.joint_alignment.JointAlignmentCallback",
        "--trainer.callbacks.vfm=debug-dinov2", f"--trainer.callbacks.vfm_pretrained={missing}",
    )  # fmt: skip
    assert line.startswith("config error at trainer.callbacks[0].init_args.vfm_pretrained:"), line
    assert missing in line
    # Raised while the model is built (jsonargparse wraps it in a Union report naming every value).
    line = _cli_error(
        capsys, "fit", "--config", str(repo_root / "configs/tokenizer/demo.yaml"),
        f"--model.init_args.vfm_pretrained={missing}",
    )  # fmt: skip
    assert line.startswith(f"config error at model.init_args.vfm_pretrained: VFM weights '{missing}' not found"), line


def test_error_tokenizer_latent_mismatch_names_both_sides(tmp_path, capsys, repo_root):
    # The demo cache holds the debug tokenizer's 8x4x4 latents; this network is built for 8x8x8.
    override = _tiny_diffusion_override(tmp_path, network_overrides={"input_size": 8})
    line = _cli_error(
        capsys, "fit", "--config", str(repo_root / "configs/diffusion/demo.yaml"), "--config", str(override)
    )
    assert "model.init_args.network_overrides" in line and "latent_root" in line, line
    assert "(8, 4, 4)" in line and "(8, 8, 8)" in line


def test_explain_parse_error_falls_back_to_none_for_other_messages():
    from argparse import ArgumentError

    assert explain_parse_error(ArgumentError(None, "something unexpected happened"), ["fit"], {}) is None
