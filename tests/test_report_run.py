"""The run report on a real run: the demo diffusion config through the CLI for 4 steps, with the CSV logger
stacked on it (configs/logger/csv.yaml); and the W&B / MLflow logger YAMLs resolve to Lightning's classes."""

from __future__ import annotations

import csv

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_report import page_images, section_text


def _tiny_demo_config(repo_root, tmp_path):
    """configs/diffusion/demo.yaml with tiny overrides only: 4 steps, a sample grid at step 2, paths in tmp."""
    cfg = yaml.safe_load((repo_root / "configs" / "diffusion" / "demo.yaml").read_text())
    cfg["trainer"].update(max_steps=4, log_every_n_steps=1, enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "tb")
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("SampleGridCallback"):
            cb["init_args"].update(every_n_steps=2, num_samples=4, num_steps=2)
    cfg["model"]["init_args"]["global_batch_size"] = 8
    cfg["data"]["init_args"].update(root=str(tmp_path / "data"), num_per_class=1, batch_size=8)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("name", "class_name", "expected"),
    [
        ("wandb.yaml", "WandbLogger", {"offline": True, "log_model": False, "save_dir": "outputs/wandb"}),
        ("mlflow.yaml", "MLFlowLogger", {"tracking_uri": "file:./outputs/mlruns", "log_model": False}),
        ("csv_only.yaml", "CSVLogger", {"save_dir": "outputs/demo/diffusion/tb", "version": "demo_lightningdit"}),
    ],
)
def test_logger_yamls_resolve_to_lightning_loggers(name, class_name, expected, repo_root, monkeypatch, capsys):
    """Parsed by the project's CLI (class paths and argument names checked by jsonargparse; nothing built, so
    wandb / mlflow need not be installed)."""
    from lightning_modules.cli import main

    monkeypatch.chdir(repo_root)
    args = ["fit", "--config", "configs/diffusion/demo.yaml", "--config", f"configs/logger/{name}", "--print_config"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert not stop.value.code
    logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    loggers = logger if isinstance(logger, list) else [logger]
    paths = [lg["class_path"] for lg in loggers]
    if name == "csv_only.yaml":  # replaces TensorBoard and takes over its folder
        assert paths == ["lightning.pytorch.loggers.CSVLogger"]
    else:  # appended: TensorBoard keeps writing what the report reads
        assert paths == ["lightning.pytorch.loggers.TensorBoardLogger", f"lightning.pytorch.loggers.{class_name}"]
    args = loggers[-1]["init_args"]
    assert {k: args[k] for k in expected} == expected


@pytest.mark.slow
def test_report_of_a_real_run_with_the_csv_logger_stacked(repo_root, tmp_path, monkeypatch):
    from lightning_modules.cli import main
    from vfmvae.report import write_report

    monkeypatch.chdir(tmp_path)  # configs/logger/csv.yaml writes to outputs/csv relative to the working folder
    config = _tiny_demo_config(repo_root, tmp_path)
    main(["fit", "--config", str(config), "--config", str(repo_root / "configs" / "logger" / "csv.yaml")])

    # both loggers wrote: the stacked YAML appended the CSV logger instead of replacing TensorBoard
    run = tmp_path / "tb" / "demo_diffusion" / "demo_lightningdit"
    (events_file,) = run.glob("events.out.tfevents.*")
    (metrics_csv,) = (tmp_path / "outputs" / "csv").rglob("metrics.csv")
    with metrics_csv.open() as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames)
        steps = {int(row["step"]) for row in reader if row.get("loss/total")}
    events = EventAccumulator(str(events_file), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    loss_tags = sorted(t for t in events.Tags()["scalars"] if t.startswith("loss/"))
    assert {"loss/total", "loss/mse"} <= set(loss_tags) and set(loss_tags) <= columns and "train/lr" in columns
    assert steps == {0, 1, 2, 3}

    out = tmp_path / "report"
    page = write_report(tmp_path, out)
    text = page.read_text()
    assert len(page_images(text, out)) >= 3
    assert text.count("<h2 id=") == 1  # the CSV copy is recognised as the same run
    losses = section_text(text, "Losses")
    assert all(tag in losses for tag in loss_tags)
    assert "grid/samples" in section_text(text, "Image grids (newest)")
    config_html = section_text(text, "Config (config.yaml)")
    saved = (run / "config.yaml").read_text()
    assert "max_steps: 4" in saved and str(tmp_path / "tb") in config_html
    assert "lightning.pytorch.loggers.CSVLogger" in config_html  # the resolved config, loggers merged
    assert str(metrics_csv.parent) in text  # "also logged to"
