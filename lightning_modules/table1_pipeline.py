"""Produce one tokenizer's Table 1 records by running the project's commands (docs/analyses.md, "Table 1").

For a tokenizer given as a source + preset (any kind: `vfmvae.tokenizer.sources.load_any_tokenizer`) and an
ImageFolder root with ``train/`` and ``val/``, `run_table1_pipeline` writes into ``out``:

1. ``tokenizer/``: the tokenizer's export folder (``save_pretrained``; every later step loads it by path);
2. ``reconstruction.json``: rFID (Frechet distance of the features of the ``val`` images and of their
   reconstructions from sampled latents) with PSNR/SSIM (`vfmvae.demo.evaluation.reconstruction_metrics`);
3. ``probe/linear_probe.json``: ``vfmvae linear-probe`` (caches ``train`` and ``val`` under ``probe/latents``);
4. ``generation.json``: ``vfmvae fit`` of the diffusion config on the ``train`` cache (the tokenizer's export
   decodes its sample grids), then ``vfmvae sample`` without CFG and the Frechet distance of the samples to the
   ``train`` images (as ADM's reference batch is the training set); the epoch is steps x batch / images;
5. ``se_cknna/se_cknna.csv``: ``vfmvae se-cknna`` of the tokenizer against the reference VFM.

The Frechet distances use an injectable feature extractor (`vfmvae.analyses.feature_extractor`: Inception for
the paper's numbers, the demo's random conv net in tests and ``make demo-analyses``). A step whose output exists
is skipped, so a rerun only does what is missing. Nothing here branches on the tokenizer kind.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import seed_everything

from vfmvae.analyses import feature_extractor, frechet_distance_of
from vfmvae.metrics.record import evaluation_record, write_record

log = logging.getLogger(__name__)

__all__ = ["run_command", "run_table1_pipeline", "PIPELINE_DEFAULTS"]

PIPELINE_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "feature_extractor": "demo",
    "probe_args": ["--protocol", "demo", "--global-batch-size", "20", "--epochs", "20"],
    "diffusion_config": str(
        Path(__file__).resolve().parents[1] / "configs" / "analyses" / "table1_diffusion_demo.yaml"
    ),
    "diffusion_steps": 60,
    "num_samples": 30,
    "sample_steps": 20,
    "se_cknna_images": 24,
    "se_cknna_resolution": 256,  # the protocol's size: its x0.25 equivariance scale must stay encodable
    "reference": "debug-dinov2",
}


def run_command(name: str, argv: list[str]) -> Any:
    """Run ``vfmvae <name> argv`` in this process and return its result (the command's ``run``, which raises on
    bad input, where it has one; else its ``main``)."""
    from lightning_modules.__main__ import _command_modules

    module = importlib.import_module(_command_modules()[name])
    log.info("table1: vfmvae %s %s", name, " ".join(argv))
    return getattr(module, "run", module.main)(argv)


def _read_split(root: Path, crop: str, size: int) -> np.ndarray:
    from datamodules.demo_data import read_demo_split

    return read_demo_split(root, crop, size)


def _step(path: Path, what: str, fn: Callable[[], Any]) -> None:
    if path.exists():
        log.info("table1: %s exists, kept (%s)", path, what)
        return
    start = time.time()
    fn()
    log.info("table1: %s done in %.1f s", what, time.time() - start)


def run_table1_pipeline(source: str | None, preset: str | None, data_root: str | os.PathLike, out: str | os.PathLike,
                        options: Mapping[str, Any] | None = None, timings: dict[str, float] | None = None) -> dict:  # fmt: skip
    """Write the four records of one tokenizer into ``out`` (see the module docstring); returns their paths."""
    from vfmvae.tokenizer.sources import load_any_tokenizer

    opt = {**PIPELINE_DEFAULTS, **dict(options or {})}
    data, out = Path(data_root), Path(out)
    size, features = int(opt["image_size"]), feature_extractor(opt["feature_extractor"])
    timings = {} if timings is None else timings
    tok_dir = out / "tokenizer"

    def timed(name: str, path: Path, fn: Callable[[], Any]) -> None:
        start = time.time()
        _step(path, name, fn)
        timings[name] = timings.get(name, 0.0) + time.time() - start

    def export() -> None:
        seed_everything(0, verbose=False)
        load_any_tokenizer(source, preset, vfm_config={"compute_dtype": "float32"}).save_pretrained(tok_dir)

    timed("export", tok_dir / "config.json", export)
    paths = {"reconstruction": out / "reconstruction.json", "linear_probe": out / "probe" / "linear_probe.json",
             "generation": out / "generation.json", "se_cknna": out / "se_cknna" / "se_cknna.csv"}  # fmt: skip

    def reconstruction() -> None:
        from vfmvae.demo.evaluation import reconstruction_metrics

        start = time.time()
        model = load_any_tokenizer(str(tok_dir))
        real = _read_split(data / "val", "resize_center", size)
        with torch.no_grad():
            metrics, recon = reconstruction_metrics(model, real)
        results = {"rfid": frechet_distance_of(features, real, recon), **metrics}
        record = evaluation_record(
            "reconstruction", results,
            protocol={"follows": "VFM-VAE tools/reconstruct at demo size", "crop": "resize_center",
                      "latent": "sampled", "features": opt["feature_extractor"]},
            inputs={"tokenizer": model.provenance(), "data_root": str(data / "val")}, weights={},
            seconds=time.time() - start,
        )  # fmt: skip
        write_record(record, paths["reconstruction"])

    timed("reconstruction", paths["reconstruction"], reconstruction)
    probe_out = out / "probe"
    timed("linear_probe", paths["linear_probe"], lambda: run_command("linear-probe", [
        "--tokenizer", str(tok_dir), "--data-root", str(data), "--image-size", str(size), "--out", str(probe_out),
        "--accelerator", "cpu", "--devices", "1", "--num-workers", "0", *map(str, opt["probe_args"])]))  # fmt: skip
    timed(
        "generation",
        paths["generation"],
        lambda: _generation(tok_dir, probe_out / "latents" / "train", data, out, opt, features, paths["generation"]),
    )
    timed("se_cknna", paths["se_cknna"], lambda: run_command("se-cknna", [
        "--demo", str(opt["se_cknna_images"]), "--resolution", str(opt["se_cknna_resolution"]), "--reference", str(opt["reference"]),
        "--model", f"tokenizer:{preset or 'export'}@{tok_dir}", "--batch-size", "8", "--device", "cpu",
        "--out-dir", str(out / "se_cknna")]))  # fmt: skip
    return {k: str(v) for k, v in paths.items()}


def _generation(
    tok_dir: Path, latents: Path, data: Path, out: Path, opt: Mapping[str, Any], features, record_path: Path
):
    from lightning_modules.cli import main as cli_main

    start = time.time()
    steps = int(opt["diffusion_steps"])
    run_dir = out / "diffusion"
    os.environ["TOKENIZER"] = str(tok_dir)  # the sample-grid callback's ${TOKENIZER} (configs name it so)
    cli = cli_main(["fit", "--config", str(opt["diffusion_config"]), f"--trainer.max_steps={steps}",
                    f"--data.init_args.config.latent_root={latents}",
                    f"--trainer.logger.init_args.save_dir={run_dir}"])  # fmt: skip
    ckpt = sorted(run_dir.rglob("last.ckpt"))
    if not ckpt:
        raise RuntimeError(f"table1: the diffusion run wrote no last.ckpt under {run_dir}")
    from datamodules.latent_dataset import find_latent_dataset

    global_batch = int(cli.model.hparams.global_batch_size)
    dataset = find_latent_dataset(cli.datamodule)
    num_latents = len(dataset) if dataset is not None else None
    samples = out / "samples"
    npz = run_command("sample", ["--ckpt", str(ckpt[-1]), "--tokenizer", str(tok_dir), "--out", str(samples),
                                 "--num-images", str(opt["num_samples"]), "--chunk-size", str(opt["num_samples"]),
                                 "--batch-size", "16", "--cfg-scale", "1", "--num-steps", str(opt["sample_steps"]),
                                 "--label-mode", "balanced", "--accelerator", "cpu", "--devices", "1"])  # fmt: skip
    generated = np.load(npz)["arr_0"]
    reference = _read_split(data / "train", "adm_center", generated.shape[1])
    epochs = None if not num_latents else steps * global_batch / num_latents
    record = evaluation_record(
        "adm", {"fid": frechet_distance_of(features, generated, reference), "num_samples": len(generated)},
        protocol={"follows": "ADM evaluator at demo size (Frechet distance only)", "cfg_scale": 1.0,
                  "features": opt["feature_extractor"], "train_steps": steps, "global_batch_size": global_batch,
                  "epochs": epochs},
        inputs={"samples": str(npz), "reference": str(data / "train"), "checkpoint": str(ckpt[-1])},
        weights={}, seconds=time.time() - start,
    )  # fmt: skip
    write_record(record, record_path)
