"""The console policy (docs/commands.md, "Console"): a tiny ``fit`` prints only allowed lines; the noise filters
drop exactly what they list; the training bar counts steps of ``max_steps`` across epochs."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.progress import StepRichProgressBar, StepTQDMProgressBar, use_step_progress_bar
from vfmvae.utils import console

# Every line a tiny demo `fit` may print: our own lines, Lightning's run facts and its progress bar.
ALLOWED = (
    r"Seed set to \d+",  # Lightning: the seed of the run (reproducibility)
    r"tokenizer 'debug' with RANDOM weights .*",  # ours: the sample grids use a random decoder
    r"`Trainer\.fit` stopped: `max_steps=4` reached\.",  # Lightning: why the run ended
    r"Steps +━+ 4/4 .*",  # the progress bar, in steps of max_steps
    r"loss: [\d.]+",  # the bar's metrics, wrapped onto a second line on narrow terminals
)


def _tiny_demo_config(repo_root, tmp_path):
    """configs/diffusion/demo.yaml for 4 steps of 2-batch epochs (the bar must run across epochs)."""
    cfg = yaml.safe_load((repo_root / "configs" / "diffusion" / "demo.yaml").read_text())
    cfg["trainer"].update(max_steps=4, log_every_n_steps=1)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "tb")
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if "SampleGrid" not in c["class_path"]]
    cfg["model"]["init_args"]["global_batch_size"] = 8
    cfg["data"]["init_args"].update(root=str(tmp_path / "data"), num_per_class=1, batch_size=8)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_a_tiny_fit_prints_only_allowed_lines(repo_root, tmp_path):
    config = _tiny_demo_config(repo_root, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "fit", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", "VFMVAE_VERBOSE": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.strip() for line in re.split(r"[\r\n]+", proc.stdout + proc.stderr) if line.strip()]
    unexpected = [line for line in lines if not any(re.fullmatch(p, line) for p in ALLOWED)]
    assert unexpected == [], "lines outside the console policy:\n" + "\n".join(unexpected)
    assert any(line.startswith("Steps") for line in lines), lines  # the bar counts steps, not `Epoch 1/-2`


@pytest.fixture
def fresh_console(monkeypatch):
    """`quiet_console` installed inside a warnings context, its logger filters removed afterwards."""
    monkeypatch.setattr(console, "_installed", False)
    monkeypatch.delenv("VFMVAE_VERBOSE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_console()
        yield caught
    for name, _, _ in console.LOG_FILTERS:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, console.NoiseFilter)]:
            logger.removeFilter(f)


def test_listed_warnings_are_dropped_and_real_ones_kept(fresh_console):
    noise = [
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
        "LightningCLI's args parameter is intended to run from within Python like if it were from the command line.",
        "You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
        "Found 12 module(s) in eval mode at the start of training. This may lead to unexpected behavior.",
        "The number of training batches (7) is smaller than the logging interval Trainer(log_every_n_steps=10).",
        "Couldn't infer the batch indices fetched from your dataloader: `DataLoader`",
    ]
    real = [
        "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.",
        "The dataloader does not have many workers which may be a bottleneck.",
        "Found 12 NaN values in the batch",
    ]
    for message in noise + real:
        warnings.warn(message, UserWarning, stacklevel=1)
    assert [str(w.message) for w in fresh_console] == real


def test_listed_log_lines_are_dropped_and_others_kept(fresh_console, caplog):
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero.info("GPU available: False, used: False")
        rank_zero.info("TPU available: False, using: 0 TPU cores")
        rank_zero.info("`Trainer.fit` stopped: `max_steps=4` reached.")
        rank_zero.warning("Checkpoint directory exists and is not empty.")
    assert [r.getMessage() for r in caplog.records] == [
        "`Trainer.fit` stopped: `max_steps=4` reached.",
        "Checkpoint directory exists and is not empty.",
    ]


def test_every_filter_says_why():
    for entry in (*console.WARNING_FILTERS, *console.LOG_FILTERS):
        assert len(entry[-1].split()) >= 8, entry  # a reason, not a label


class _Tiny(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 batches an epoch


def _fit(tmp_path, bar, **trainer_kwargs):
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar] if bar is not None else None,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    use_step_progress_bar(trainer)
    trainer.fit(_Tiny())
    return trainer


def test_tqdm_bar_counts_steps_of_max_steps_across_epochs(tmp_path):
    trainer = _fit(tmp_path, TQDMProgressBar(), max_steps=7)  # 3 epochs of 3 batches, stopped at 7
    bar = trainer.progress_bar_callback
    assert type(bar) is StepTQDMProgressBar
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (7, 7)
    assert bar.train_progress_bar.desc.startswith("Steps")


def test_rich_bar_counts_steps_of_max_steps_across_epochs(tmp_path):
    trainer = _fit(tmp_path, None, max_steps=7)  # Lightning's default bar (Rich, installed) is swapped
    bar = trainer.progress_bar_callback
    assert type(bar) is StepRichProgressBar
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.total, task.completed) == (7, 7) and "Steps" in task.description
    assert isinstance(bar, RichProgressBar)


def test_epoch_based_runs_keep_lightnings_bar(tmp_path):
    trainer = _fit(tmp_path, TQDMProgressBar(), max_epochs=2)
    bar = trainer.progress_bar_callback
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (3, 3)  # one epoch's batches
    assert bar.train_progress_bar.desc.startswith("Epoch 1")
