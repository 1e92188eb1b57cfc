"""`make demo`: the whole VFM-VAE pipeline on the embedded demo photographs, on a CPU, in minutes.

    python scripts/demo.py [--size demo|ci|debug] [--out outputs/demo] [--redo PHASE ...] [--threads 1]

Phases (each prints its time, writes ``<out>/.done/<phase>.json`` when finished; a second run reuses
finished phases and redoes an unfinished one from its start):

1. ``data``             the embedded photographs (15 classes, ``datamodules/demo_data.py``) as ImageFolder
                        ``train`` / ``val`` splits;
2. ``tokenizer_stage0`` tokenizer stage 0 (strong alignment, paper §3 / tokenizer spec §5) with the tiny random
                        SigLIP (``configs/tokenizer/demo.yaml``, through ``python -m lightning_modules fit``);
3. ``tokenizer_stage2`` a short stage 2 (SSIM fine-tuning of the decoder) from stage 0's checkpoint
                        (``configs/demo/tokenizer_stage2.yaml``); its end-of-fit export is the demo tokenizer;
4. ``export``           reload the export folder (``load_tokenizer``) and check its weights hash;
5. ``cache_latents``    ``scripts/cache_latents.py --store-images`` on the train split (ADM crop, image + flip);
6. ``reg``              tiny REG (SiT + class token) on the cache with joint alignment to the tiny random DINOv2
                        and the SE-CKNNA probe (``configs/demo/reg.yaml``); TensorBoard logs + heat-map;
7. ``sample``           ``scripts/sample.py``, class-balanced: one image per class and seed -> class grid;
8. ``evaluate``         reconstruction PSNR/SSIM of the trained vs the untrained tokenizer on the held-out
                        split (paper protocol: sampled latents, uint8 outputs), and a demo FID of the samples vs
                        the held-out split in the space of a tiny fixed random conv net (`demo_feature_net`);
9. ``summary``          ``metrics.json``, ``summary.txt`` and the self-checks (PASS/FAIL; exit 1 on FAIL when the
                        size enforces them: ``demo`` does, the CI sizes train too briefly and only report them).

Each run config is written complete to ``<out>/configs/`` (the static YAML with this size's steps and paths
filled in), so every training phase can be repeated by hand with ``python -m lightning_modules fit --config``.
Everything is tiny and randomly initialised: no weight file and no network access is needed. The numbers
show the machinery works, they are not the paper's (README "Reproducing the paper").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

NUM_CLASSES = 15  # datamodules.demo_data.DEMO_CLASSES
VAL_SEED = 1_000_003  # the held-out split's seed, as ImageNetDataModule.prepare_data derives it
FEATURE_SEED = 0  # the demo FID's random feature network (DemoFeatureNet)
FEATURE_DIM = 32


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is. Steps count optimiser steps (tokenizer: one D + one G update = ``tokenizer_batch``
    images); ``budget_s`` is the wall-clock target reported in the summary (not enforced)."""

    train_per_class: int = 16
    val_per_class: int = 8
    source_resolution: int = 128  # written photographs; the runs crop them to `resolution`
    resolution: int = 64  # the debug tokenizer's input (8x4x4 latents)
    stage0_steps: int = 300
    stage0_val_every: int = 100
    stage2_steps: int = 60
    tokenizer_batch: int = 8
    tokenizer_lr: float = 1e-3
    reg_steps: int = 400
    reg_batch: int = 16
    reg_lr: float = 1e-3
    probe_every: int = 100
    probe_images: int = 60
    probe_topk: int = 5
    sample_seeds: int = 4  # x 15 classes
    sample_steps: int = 40
    cfg_scale: float = 2.0
    recon_images: int = 120
    budget_s: float = 900.0
    enforce_checks: bool = True  # exit 1 when a self-check fails

    def __post_init__(self) -> None:
        if min(self.train_per_class, self.val_per_class, self.stage0_steps, self.stage2_steps, self.reg_steps) < 1:
            raise ValueError(f"demo sizes must be >= 1: {self}")
        if self.sample_seeds < 2:
            raise ValueError("sample_seeds must be >= 2: the class check compares classes against their spread")
        if self.probe_images < max(4, self.probe_topk + 1) or self.probe_images > self.train_per_class * NUM_CLASSES:
            raise ValueError(f"probe_images must lie in [max(4, topk + 1), train images], got {self.probe_images}")
        if self.recon_images > self.val_per_class * NUM_CLASSES:
            raise ValueError(f"recon_images {self.recon_images} > held-out images {self.val_per_class * NUM_CLASSES}")


SIZES: dict[str, DemoSize] = {
    # `make demo`: ~8 min on 2 idle cores (docs/demo.md has the measured phase times).
    "demo": DemoSize(),
    # CI (tests/test_demo.py): every phase, fewer images and steps.
    "ci": DemoSize(
        train_per_class=4,
        val_per_class=2,
        stage0_steps=30,
        stage0_val_every=30,
        stage2_steps=5,
        reg_steps=30,
        reg_batch=12,
        probe_every=15,
        probe_images=12,
        probe_topk=3,
        sample_seeds=2,
        sample_steps=10,
        recon_images=30,
        budget_s=240.0,
        enforce_checks=False,
    ),
    # Smallest run that still goes through every phase (checks may FAIL at this size): debugging the demo itself.
    "debug": DemoSize(
        train_per_class=2,
        val_per_class=1,
        stage0_steps=4,
        stage0_val_every=4,
        stage2_steps=2,
        reg_steps=4,
        reg_batch=10,
        probe_every=2,
        probe_images=8,
        probe_topk=3,
        sample_seeds=2,
        sample_steps=4,
        recon_images=15,
        budget_s=120.0,
        enforce_checks=False,
    ),
}

RUN_VERSIONS = {0: "stage0_strong_alignment", 2: "stage2_ssim_fine_tuning"}  # tb_layout.run_version(stage, name)
PHASES = (
    "data",
    "tokenizer_stage0",
    "tokenizer_stage2",
    "export",
    "cache_latents",
    "reg",
    "sample",
    "evaluate",
    "summary",
)


@dataclass
class Demo:
    """Paths and state of one demo run; phases read earlier phases' records from ``records``."""

    size_name: str
    size: DemoSize
    out: Path
    threads: int = 1
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self.size), sort_keys=True).encode()).hexdigest()[:16]

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def marker(self, phase: str) -> Path:
        return self.path(".done", f"{phase}.json")


# ------------------------------------------------------------------------------------------------ helpers
def run_fit(config: Path, what: str) -> None:
    """``python -m lightning_modules fit --config CONFIG``, in this process (imports are paid once per demo)."""
    from lightning_modules.cli import main as cli_main

    print(f"  $ python -m lightning_modules fit --config {config}", flush=True)
    try:
        cli_main(["fit", "--config", str(config)])
    except SystemExit as err:  # LightningCLI exits on bad configs
        if err.code:
            raise RuntimeError(
                f"{what}: `python -m lightning_modules fit --config {config}` exited with {err.code}"
            ) from err


def run_script(main: Callable[[list[str]], Any], script: str, args: list[str]) -> Any:
    """A project script's ``main(argv)`` in this process, printed as the equivalent command."""
    print(f"  $ python {script} " + " ".join(args), flush=True)
    return main(args)


def _callback(config: dict, suffix: str) -> dict:
    for cb in config["trainer"].get("callbacks") or []:
        if cb["class_path"].endswith(suffix):
            cb.setdefault("init_args", {})
            return cb
    raise KeyError(
        f"the run config has no callback {suffix!r}; callbacks: "
        f"{[cb['class_path'] for cb in config['trainer'].get('callbacks') or []]}"
    )


def _ensure_callback(config: dict, class_path: str, init_args: dict | None = None) -> None:
    callbacks = config["trainer"].setdefault("callbacks", [])
    if not any(cb["class_path"] == class_path for cb in callbacks):
        callbacks.append({"class_path": class_path, **({"init_args": init_args} if init_args else {})})


def write_run_config(demo: Demo, base: str, name: str, edit: Callable[[dict], None]) -> Path:
    """Load the static YAML ``base``, apply this size's values and paths, write ``<out>/configs/<name>.yaml``."""
    config = yaml.safe_load((REPO / base).read_text())
    edit(config)
    path = demo.path("configs", f"{name}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by scripts/demo.py --size {demo.size_name} from {base}.\n" + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def _last_checkpoint(run_dir: Path) -> Path:
    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"expected the run's last checkpoint at {path}")
    return path


def _save_png(array_hwc: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array_hwc)).save(path)


def image_grid(tiles: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 ``(rows, cols, H, W, 3)`` -> one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, 3)`` image, white gaps."""
    rows, cols, h, w, _ = tiles.shape
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[top : top + h, left : left + w] = tiles[r, c]
    return grid


# ------------------------------------------------------------------------------------------------ phases
def phase_data(demo: Demo) -> dict:
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder

    s = demo.size
    train = DemoDataConfig(resolution=s.source_resolution, num_per_class=s.train_per_class, seed=0)
    val = DemoDataConfig(resolution=s.source_resolution, num_per_class=s.val_per_class, seed=VAL_SEED)
    shutil.rmtree(demo.path("data"), ignore_errors=True)  # a half-written tree would be refused
    write_demo_imagefolder(demo.path("data", "train"), train)
    write_demo_imagefolder(demo.path("data", "val"), val)
    return {
        "train_images": s.train_per_class * NUM_CLASSES,
        "val_images": s.val_per_class * NUM_CLASSES,
        "root": str(demo.path("data")),
    }


def _tokenizer_config(demo: Demo, config: dict, stage: int, steps: int, val_every: int, export: Path | None) -> None:
    s = demo.size
    t = config["trainer"]
    t.update(
        max_steps=steps,
        val_check_interval=min(val_every, steps),
        check_val_every_n_epoch=None,
        limit_val_batches=max(1, s.recon_images // 16),
        enable_progress_bar=True,
    )
    t["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(demo.path("tokenizer", "tb")), "name": "demo", "version": RUN_VERSIONS[stage]},
    }
    ckpt = _callback(config, "AtomicModelCheckpoint")["init_args"]
    ckpt.update(every_n_train_steps=steps, save_top_k=-1, save_last=True)
    grid = _callback(config, "ReconstructionGridCallback")["init_args"]
    grid["every_n_steps"] = min(int(grid.get("every_n_steps", val_every)), steps)
    _ensure_callback(config, "callbacks.tb_layout.TensorBoardLayoutCallback")
    m = config["model"]["init_args"]
    m.update(global_batch_size=s.tokenizer_batch, export_dir=str(export) if export else None)
    d = config["data"]["init_args"]["config"]
    d.update(
        root=str(demo.path("data")),
        train_split="train",
        val_split="val",
        resolution=s.resolution,
        batch_size=s.tokenizer_batch,
        val_batch_size=16,
        demo=None,
        num_workers=0,
        min_seen_for_bad_check=min(50, s.train_per_class * NUM_CLASSES),
    )


def _tokenizer_run_dir(demo: Demo, stage: int) -> Path:
    return demo.path("tokenizer", "tb", "demo", RUN_VERSIONS[stage])


def _tokenizer_record(run_dir: Path) -> dict:
    summary = run_dir / "tokenizer_summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"the tokenizer run wrote no {summary} (TokenizerModule.on_fit_end)")
    record = json.loads(summary.read_text())
    return {"run_dir": str(run_dir), "checkpoint": str(_last_checkpoint(run_dir)), "summary": record}


def phase_tokenizer_stage0(demo: Demo) -> dict:
    shutil.rmtree(_tokenizer_run_dir(demo, 0), ignore_errors=True)
    s = demo.size
    cfg = write_run_config(
        demo,
        "configs/tokenizer/demo.yaml",
        "tokenizer_stage0",
        lambda c: (
            _tokenizer_config(demo, c, 0, s.stage0_steps, s.stage0_val_every, None),
            c["model"]["init_args"].update(lr=s.tokenizer_lr),
        ),
    )
    run_fit(cfg, "tokenizer stage 0")
    return _tokenizer_record(_tokenizer_run_dir(demo, 0))


def handoff_checkpoint(demo: Demo, stage0_ckpt: str) -> Path:
    """Stage 0's checkpoint with its frozen networks (random SigLIP, D's ViT) put back in.

    Checkpoints leave the frozen networks out and the next stage rebuilds them (from files in the paper runs).
    Random ones are rebuilt from the seed, but `TokenizerModule` draws them from the RNG stream *after* the
    trainable head, whose size depends on the stage (stage 0's VF projection), so stage 2 would build other
    random networks and refuse the hand-off. A checkpoint that holds the frozen tensors loads them as they are
    (`tokenizer_state.fill_frozen_keys`); we rebuild stage 0's module, check its frozen hashes against the ones
    the checkpoint recorded, and put those tensors in.
    """
    import torch

    from lightning_modules.tokenizer import STATE_KEY, TokenizerModule
    from lightning_modules.tokenizer_state import FROZEN_PREFIXES, frozen_hashes

    args = yaml.safe_load(demo.path("configs", "tokenizer_stage0.yaml").read_text())["model"]["init_args"]
    module = TokenizerModule(**{**args, "export_dir": None})
    ckpt = torch.load(stage0_ckpt, map_location="cpu", weights_only=False)
    recorded = {k: v.get("sha256") for k, v in (ckpt.get(STATE_KEY, {}).get("frozen") or {}).items()}
    rebuilt = frozen_hashes(module)
    wrong = sorted(k for k, h in recorded.items() if h is not None and rebuilt.get(k) != h)
    if wrong:
        raise RuntimeError(f"rebuilt stage-0 frozen networks {wrong} differ from those {stage0_ckpt} recorded")
    state = module.state_dict()
    for prefix in FROZEN_PREFIXES.values():
        ckpt["state_dict"].update({k: v for k, v in state.items() if k.startswith(prefix)})
    path = demo.path("tokenizer", "stage0_handoff.ckpt")
    torch.save(ckpt, path)
    return path


def phase_tokenizer_stage2(demo: Demo) -> dict:
    shutil.rmtree(_tokenizer_run_dir(demo, 2), ignore_errors=True)
    shutil.rmtree(demo.path("tokenizer", "export"), ignore_errors=True)
    s = demo.size
    init = str(handoff_checkpoint(demo, demo.records["tokenizer_stage0"]["checkpoint"]))

    def edit(c: dict) -> None:
        _tokenizer_config(demo, c, 2, s.stage2_steps, s.stage2_steps, demo.path("tokenizer", "export"))
        c["model"]["init_args"]["init_checkpoint"] = init

    cfg = write_run_config(demo, "configs/demo/tokenizer_stage2.yaml", "tokenizer_stage2", edit)
    run_fit(cfg, "tokenizer stage 2")
    return _tokenizer_record(_tokenizer_run_dir(demo, 2))


def phase_export(demo: Demo) -> dict:
    from vfmvae.provenance import state_dict_sha256
    from vfmvae.tokenizer.export import load_tokenizer, read_export_config

    folder = demo.path("tokenizer", "export")
    if not folder.is_dir():
        raise FileNotFoundError(f"stage 2 wrote no export folder {folder} (model.init_args.export_dir)")
    record = read_export_config(folder)
    model = load_tokenizer(folder)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith("vfm.")}
    reloaded = state_dict_sha256(weights)
    if record.get("weights_sha256") not in (None, reloaded):
        raise RuntimeError(
            f"export {folder}: weights hash {reloaded} differs from config.json's {record.get('weights_sha256')}"
        )
    return {
        "folder": str(folder),
        "weights_sha256": reloaded,
        "provenance": record.get("provenance"),
        "parameters": sum(v.numel() for v in weights.values()),
    }


def phase_cache_latents(demo: Demo) -> dict:
    from scripts.cache_latents import main as cache_main

    # Resumable by itself (finished shards are kept), but only for the same tokenizer: a redone export starts over.
    out = demo.path("latents")
    stamp = out / "demo_tokenizer_sha256.txt"
    tokenizer_sha = demo.records["export"]["weights_sha256"]
    if out.exists() and (not stamp.is_file() or stamp.read_text() != tokenizer_sha):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(tokenizer_sha)
    run_script(
        cache_main,
        "scripts/cache_latents.py",
        [
            "--data-root",
            str(demo.path("data", "train")),
            "--tokenizer",
            str(demo.path("tokenizer", "export")),
            "--out",
            str(out),
            "--image-size",
            str(demo.size.resolution),
            "--batch-size",
            "32",
            "--num-workers",
            "0",
            "--shard-size",
            "128",
            "--store-images",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
        ],
    )
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "root": str(out),
        "num_written": manifest["num_written"],
        "latent_shape": manifest["latent_shape"],
        "tokenizer_sha256": manifest["tokenizer"].get("weights_sha256"),
    }


def _reg_run_dir(demo: Demo) -> Path:
    return demo.path("reg", "tb", "demo", "reg")


def phase_reg(demo: Demo) -> dict:
    shutil.rmtree(_reg_run_dir(demo), ignore_errors=True)
    s = demo.size

    def edit(c: dict) -> None:
        t = c["trainer"]
        t.update(max_steps=s.reg_steps, enable_progress_bar=True)
        t["logger"]["init_args"].update(save_dir=str(demo.path("reg", "tb")), name="demo", version="reg")
        _callback(c, "AtomicModelCheckpoint")["init_args"].update(every_n_train_steps=s.reg_steps, save_last=True)
        probe = _callback(c, "SECKNNAProbeCallback")["init_args"]
        probe["overrides"].update(
            root=str(demo.path("latents")), every_n_steps=s.probe_every, num_images=s.probe_images, topk=s.probe_topk
        )
        grid = _callback(c, "SampleGridCallback")["init_args"]
        grid.update(
            tokenizer=str(demo.path("tokenizer", "export")),
            every_n_steps=s.probe_every,
            latent_stats=str(demo.path("latents", "latents_stats.pt")),
        )
        c["model"]["init_args"].update(global_batch_size=s.reg_batch, lr=s.reg_lr)
        c["data"]["init_args"]["config"].update(latent_root=str(demo.path("latents")), batch_size=s.reg_batch)

    cfg = write_run_config(demo, "configs/demo/reg.yaml", "reg", edit)
    run_fit(cfg, "REG training")
    run_dir = _reg_run_dir(demo)
    heatmap = _heatmap_from_tensorboard(run_dir, demo.path("se_cknna_heatmap.png"))
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(_last_checkpoint(run_dir)),
        **heatmap,
        "final_loss": _last_scalars(run_dir, "loss/"),
    }


def _event_accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _last_scalars(run_dir: Path, prefix: str) -> dict[str, float]:
    acc = _event_accumulator(run_dir)
    return {t: float(acc.Scalars(t)[-1].value) for t in acc.Tags()["scalars"] if t.startswith(prefix)}


def _heatmap_from_tensorboard(run_dir: Path, png: Path) -> dict:
    """The probe's last heat-map image (already PNG-encoded in the event file) + its last CKNNA scalars."""
    acc = _event_accumulator(run_dir)
    tag = "probe/cknna_heatmap"
    if tag not in acc.Tags()["images"]:
        raise RuntimeError(f"the SE-CKNNA probe logged no {tag!r} image to {run_dir}")
    event = acc.Images(tag)[-1]
    png.write_bytes(event.encoded_image_string)
    scalars = {
        t.removeprefix("probe/cknna/"): float(acc.Scalars(t)[-1].value)
        for t in acc.Tags()["scalars"]
        if t.startswith("probe/cknna/")
    }
    return {"heatmap_png": str(png), "heatmap_step": int(event.step), "probe_cknna": scalars}


def phase_sample(demo: Demo) -> dict:
    """One class-balanced batch of 15 per seed (the network has 1000 label rows; ``balanced`` gives ids 0..14)."""
    from scripts.sample import main as sample_main

    s = demo.size
    ckpt = demo.records["reg"]["checkpoint"]
    shutil.rmtree(demo.path("samples"), ignore_errors=True)  # samples of an earlier REG run would be refused
    images, labels = [], []
    for seed in range(s.sample_seeds):
        out = demo.path("samples", f"seed{seed}")
        npz = run_script(
            sample_main,
            "scripts/sample.py",
            [
                "--ckpt",
                ckpt,
                "--tokenizer",
                str(demo.path("tokenizer", "export")),
                "--out",
                str(out),
                "--latent-stats",
                str(demo.path("latents", "latents_stats.pt")),
                "--num-images",
                str(NUM_CLASSES),
                "--chunk-size",
                str(NUM_CLASSES),
                "--batch-size",
                str(NUM_CLASSES),
                "--label-mode",
                "balanced",
                "--seed",
                str(seed),
                "--num-steps",
                str(s.sample_steps),
                "--cfg-scale",
                str(s.cfg_scale),
                "--accelerator",
                "cpu",
                "--devices",
                "1",
            ],
        )
        npz = npz or next(out.glob("samples_*.npz"))
        with np.load(npz) as data:
            images.append(data["arr_0"])
            labels.append(data["labels"])
    arr, lab = np.concatenate(images), np.concatenate(labels)
    if set(lab.tolist()) != set(range(NUM_CLASSES)):
        raise RuntimeError(f"expected class ids 0..{NUM_CLASSES - 1} from balanced sampling, got {sorted(set(lab))}")
    np.savez(demo.path("samples", "all.npz"), arr_0=arr, labels=lab)
    # Grid: one row per class, one column per seed.
    order = np.stack([np.flatnonzero(lab == c)[: s.sample_seeds] for c in range(NUM_CLASSES)])
    _save_png(image_grid(arr[order]), demo.path("samples.png"))
    return {
        "num_images": int(len(arr)),
        "npz": str(demo.path("samples", "all.npz")),
        "grid_png": str(demo.path("samples.png")),
    }


def _held_out_images(demo: Demo, crop: str, limit: int | None = None) -> np.ndarray:
    """uint8 NHWC held-out images, cropped with a named crop (conventions.md) to the demo resolution."""
    from datamodules.crops import get_crop
    from datamodules.decoding import decode_rgb
    from datamodules.imagefolder import ImageFolderSource

    source = ImageFolderSource(str(demo.path("data", "val")))
    n = len(source) if limit is None else min(limit, len(source))
    fn = get_crop(crop)
    return np.stack([fn(decode_rgb(source[i].data), demo.size.resolution) for i in range(n)])


def untrained_tokenizer(stage0_config: str | Path = REPO / "configs/tokenizer/demo.yaml"):
    """The tokenizer exactly as stage 0 started: built by `TokenizerModule` itself from the stage-0 run config
    (same seed, so the same random frozen VFM and initial weights; `phase_evaluate` checks the VFM)."""
    from lightning_modules.tokenizer import TokenizerModule

    args = yaml.safe_load(Path(stage0_config).read_text())["model"]["init_args"]
    return TokenizerModule(**{**args, "export_dir": None}).tokenizer.eval()


def reconstruction_metrics(model, images: np.ndarray, seed: int = 0) -> tuple[dict, np.ndarray]:
    """PSNR/SSIM (paper protocol: sampled latent, uint8-quantised output) and the uint8 reconstructions."""
    import torch
    from tqdm import tqdm

    from vfmvae.tokenizer.reconstruction_metrics import psnr_per_image, ssim_per_image, to_uint8

    real = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    psnr, ssim, recon = [], [], []
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for start in tqdm(range(0, len(real), 16), desc="  reconstruct", leave=False):
            batch = real[start : start + 16]
            posterior = model.encode(batch.float() / 255.0)
            fake = to_uint8(model.decode(posterior.sample(generator=gen)))
            psnr.append(psnr_per_image(batch, fake))
            ssim.append(ssim_per_image(batch, fake))
            recon.append(fake)
    fake = torch.cat(recon).permute(0, 2, 3, 1).numpy()
    return {"psnr": float(torch.cat(psnr).mean()), "ssim": float(torch.cat(ssim).mean()), "num_images": len(real)}, fake


def _train_images(demo: Demo, n: int) -> np.ndarray:
    """The first ``n`` training images of each class in turn, ADM-cropped (the real-vs-real FID floor)."""
    from datamodules.crops import adm_center_crop
    from datamodules.decoding import decode_rgb
    from datamodules.imagefolder import ImageFolderSource

    source = ImageFolderSource(str(demo.path("data", "train")))
    step = max(1, len(source) // n)
    return np.stack(
        [adm_center_crop(decode_rgb(source[i].data), demo.size.resolution) for i in range(0, len(source), step)][:n]
    )


def demo_feature_net():
    """A tiny fixed random conv net for the demo FID (kaiming-normal, seed ``FEATURE_SEED``; no weights file).

    Inception-v3 would cost ~1 CPU-second per image here (299 px); this net is ~1000x cheaper and, being random
    but fixed, still maps images to colour/texture statistics, so the demo FID ranks sample sets consistently
    within the demo. It is not comparable with any published FID (README: `make evaluate` for the ADM suite).
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(FEATURE_SEED)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, FEATURE_DIM, 4, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.zero_()
    return net.eval().requires_grad_(False)


def demo_fid(images_a: np.ndarray, images_b: np.ndarray) -> float:
    """Fréchet distance (`vfmvae.metrics.frechet_distance`) of two uint8 NHWC sets in `demo_feature_net` space."""
    import torch

    from vfmvae.metrics import frechet_distance

    net = demo_feature_net()
    with torch.no_grad():
        feats = [
            net(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0).double().numpy()
            for x in (images_a, images_b)
        ]
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in feats]
    return float(frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))


def class_difference_test(images: np.ndarray, labels: np.ndarray) -> dict:
    """One-way ANOVA of per-image mean colour across classes (per RGB channel, Bonferroni over channels).

    Classes "differ" when the smallest corrected p-value is < 0.01: the class label changes what is sampled.
    """
    from scipy.stats import f_oneway

    colour = images.reshape(len(images), -1, 3).astype(np.float64).mean(1)  # (N, 3)
    tests = [f_oneway(*[colour[labels == c, ch] for c in np.unique(labels)]) for ch in range(3)]
    p = min(1.0, 3 * min(float(t.pvalue) for t in tests))
    return {"f_statistic": [float(t.statistic) for t in tests], "p_value": p, "threshold": 0.01}


def phase_evaluate(demo: Demo) -> dict:
    import torch

    from vfmvae.tokenizer.export import load_tokenizer

    s = demo.size
    # Reconstruction (tokenizer spec §6 crop: resize_center) on held-out images, trained vs untrained.
    held_out = _held_out_images(demo, "resize_center", s.recon_images)
    trained = load_tokenizer(demo.path("tokenizer", "export")).eval()
    untrained = untrained_tokenizer(demo.path("configs", "tokenizer_stage0.yaml"))
    same_vfm = all(
        torch.equal(a, b) for a, b in zip(trained.vfm.state_dict().values(), untrained.vfm.state_dict().values())
    )
    if not same_vfm:
        raise RuntimeError(
            "the untrained baseline's frozen VFM differs from the exported one: the baseline "
            "would not be the same tokenizer before training (TokenizerModule seeding changed?)"
        )
    after, fake_after = reconstruction_metrics(trained, held_out)
    before, fake_before = reconstruction_metrics(untrained, held_out)
    # One row per class (held-out images are in class order, equally many per class): image | untrained | trained.
    rows = np.arange(0, len(held_out), max(1, len(held_out) // NUM_CLASSES))[:NUM_CLASSES]
    tiles = np.stack([held_out[rows], fake_before[rows], fake_after[rows]], axis=1)
    _save_png(image_grid(tiles), demo.path("reconstructions.png"))

    # Demo FID: samples vs the held-out split (ADM crop, as generation references) in a tiny random feature space.
    with np.load(demo.records["sample"]["npz"]) as data:
        samples = data["arr_0"]
    reference = _held_out_images(demo, "adm_center")
    train = _train_images(demo, len(reference))
    fid = {
        "fid": demo_fid(samples, reference),
        "fid_train_vs_val": demo_fid(train, reference),
        "num_samples": len(samples),
        "num_reference": len(reference),
    }
    with np.load(demo.records["sample"]["npz"]) as data:
        classes = class_difference_test(data["arr_0"], data["labels"])
    return {
        "reconstruction": {
            "untrained": before,
            "trained": after,
            "psnr_gain_db": after["psnr"] - before["psnr"],
            "ssim_gain": after["ssim"] - before["ssim"],
            "grid_png": str(demo.path("reconstructions.png")),
        },
        "demo_fid": fid,
        "fid_feature_network": f"DemoFeatureNet: 3 strided convs, kaiming-random (seed {FEATURE_SEED}), "
        f"{FEATURE_DIM}-d mean-pooled; comparable only within the demo",
        "class_difference": classes,
    }


CHECKS = (
    (
        "reconstructions beat the untrained tokenizer by >= 3 dB PSNR",
        lambda r: r["evaluate"]["reconstruction"]["psnr_gain_db"] >= 3.0,
        lambda r: f"{r['evaluate']['reconstruction']['psnr_gain_db']:+.2f} dB",
    ),
    (
        "sample statistics differ between classes (ANOVA of mean colour, p < 0.01)",
        lambda r: r["evaluate"]["class_difference"]["p_value"] < 0.01,
        lambda r: f"p = {r['evaluate']['class_difference']['p_value']:.2g}",
    ),
)
OUTPUTS = ("reconstructions.png", "samples.png", "se_cknna_heatmap.png", "metrics.json")


def phase_summary(demo: Demo) -> dict:
    r = demo.records
    checks = []
    for name, ok, detail in CHECKS:
        try:
            checks.append({"check": name, "passed": bool(ok(r)), "detail": detail(r)})
        except (KeyError, TypeError) as err:
            checks.append({"check": name, "passed": False, "detail": f"no result ({err!r})"})
    seconds = {p: r[p].get("seconds") for p in PHASES if p in r and p != "summary"}
    cpu = {p: r[p].get("cpu_seconds") for p in PHASES if p in r and p != "summary"}
    ev = r["evaluate"]
    metrics = {
        "size": demo.size_name,
        "size_config": asdict(demo.size),
        "phase_seconds": seconds,
        "phase_cpu_seconds": cpu,
        "total_seconds": round(sum(v or 0.0 for v in seconds.values()), 1),
        "total_cpu_seconds": round(sum(v or 0.0 for v in cpu.values()), 1),
        "reconstruction": ev["reconstruction"],
        "demo_fid": ev["demo_fid"],
        "fid_feature_network": ev["fid_feature_network"],
        "class_difference": ev["class_difference"],
        "probe_cknna": r["reg"].get("probe_cknna"),
        "reg_final_loss": r["reg"].get("final_loss"),
        "tokenizer": {
            "stage0": r["tokenizer_stage0"]["summary"],
            "stage2": r["tokenizer_stage2"]["summary"],
            "export_sha256": r["export"]["weights_sha256"],
        },
        "latents": {k: r["cache_latents"][k] for k in ("num_written", "latent_shape")},
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }
    demo.path("metrics.json").write_text(json.dumps(metrics, indent=2))
    missing = [name for name in OUTPUTS if not demo.path(name).is_file() or demo.path(name).stat().st_size == 0]
    if missing:
        metrics["checks"].append({"check": "outputs exist", "passed": False, "detail": ", ".join(missing)})
        metrics["passed"] = False
        demo.path("metrics.json").write_text(json.dumps(metrics, indent=2))
    text = render_summary(demo, metrics)
    demo.path("summary.txt").write_text(text + "\n")
    return {"passed": metrics["passed"], "text": text}


def render_summary(demo: Demo, m: dict) -> str:
    rec, fid = m["reconstruction"], m["demo_fid"]
    lines = [
        "=" * 78,
        f"VFM-VAE demo ({demo.size_name}) - outputs in {demo.out}",
        "-" * 78,
        "phase wall [s] " + ", ".join(f"{k} {v:.0f}" for k, v in m["phase_seconds"].items() if v is not None),
        f"total {m['total_seconds']:.0f} s wall, {m['total_cpu_seconds']:.0f} s CPU (target < {demo.size.budget_s:.0f} s;"
        " CPU time ~ the wall time on idle cores)",
        f"tokenizer  held-out PSNR {rec['untrained']['psnr']:.2f} -> {rec['trained']['psnr']:.2f} dB, "
        f"SSIM {rec['untrained']['ssim']:.3f} -> {rec['trained']['ssim']:.3f} ({rec['trained']['num_images']} images)",
        f"latents    {m['latents']['num_written']} cached, shape {m['latents']['latent_shape']}",
        "REG        final " + ", ".join(f"{k} {v:.4f}" for k, v in sorted((m["reg_final_loss"] or {}).items())),
        "probe      CKNNA " + ", ".join(f"{k} {v:.3f}" for k, v in (m["probe_cknna"] or {}).items()),
        f"samples    demo FID {fid['fid']:.3f} vs held-out ({int(fid['num_samples'])} samples, "
        f"{int(fid['num_reference'])} images; real train images: {fid['fid_train_vs_val']:.3f}; random features)",
        "files      reconstructions.png, samples.png (row = class), se_cknna_heatmap.png, metrics.json, "
        "TensorBoard: tensorboard --logdir " + str(demo.out),
        "-" * 78,
    ]
    lines += [f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in m["checks"]]
    if not demo.size.enforce_checks:
        lines.append(f"(size {demo.size_name!r} trains too briefly to enforce the checks: reported only)")
    lines += ["=" * 78]
    return "\n".join(lines)


PHASE_FUNCTIONS: dict[str, Callable[[Demo], dict]] = {
    "data": phase_data,
    "tokenizer_stage0": phase_tokenizer_stage0,
    "tokenizer_stage2": phase_tokenizer_stage2,
    "export": phase_export,
    "cache_latents": phase_cache_latents,
    "reg": phase_reg,
    "sample": phase_sample,
    "evaluate": phase_evaluate,
    "summary": phase_summary,
}


# ------------------------------------------------------------------------------------------------ driver
def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, the unloaded-time estimate."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_demo(
    size: str = "demo", out: str | Path = "outputs/demo", redo: list[str] | None = None, threads: int = 1
) -> Demo:
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {sorted(SIZES)}")
    unknown = sorted(set(redo or []) - set(PHASES) - {"all"})
    if unknown:
        raise ValueError(f"unknown phases {unknown}; the demo's phases are {list(PHASES)} (or 'all')")
    demo = Demo(size, SIZES[size], Path(out).resolve(), threads)
    import torch

    # One intra-op thread: tiny models on a shared 2-core machine run several times faster than oversubscribed.
    torch.set_num_threads(threads)
    demo.out.mkdir(parents=True, exist_ok=True)
    stamp = demo.path(".done", "size.json")
    if stamp.is_file() and json.loads(stamp.read_text())["fingerprint"] != demo.fingerprint:
        old = json.loads(stamp.read_text())["size"]
        raise FileExistsError(
            f"{demo.out} holds a demo of size {old!r} with other settings; use another --out, "
            f"`make clean`, or `--redo all`"
        )
    if "all" in (redo or []):
        shutil.rmtree(demo.path(".done"), ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"size": size, "fingerprint": demo.fingerprint}))
    redo_from = min((PHASES.index(p) for p in redo or [] if p in PHASES), default=len(PHASES))
    start = time.time()
    for i, phase in enumerate(PHASES):
        marker = demo.marker(phase)
        if marker.is_file() and i < redo_from and phase != "summary":
            demo.records[phase] = json.loads(marker.read_text())
            print(
                f"[{i + 1}/{len(PHASES)}] {phase}: done before ({demo.records[phase]['seconds']:.1f} s), reused",
                flush=True,
            )
            continue
        marker.unlink(missing_ok=True)
        print(f"[{i + 1}/{len(PHASES)}] {phase} ...", flush=True)
        t0, cpu0 = time.time(), _cpu_seconds()
        try:
            record = PHASE_FUNCTIONS[phase](demo)
        except Exception as err:
            print(f"[{i + 1}/{len(PHASES)}] {phase}: FAILED after {time.time() - t0:.1f} s: {err}", flush=True)
            raise
        record["seconds"] = round(time.time() - t0, 2)
        record["cpu_seconds"] = round(_cpu_seconds() - cpu0, 2)
        demo.records[phase] = record
        if phase != "summary":
            marker.write_text(json.dumps(record, indent=1, default=str))
        print(
            f"[{i + 1}/{len(PHASES)}] {phase}: {record['seconds']:.1f} s wall, {record['cpu_seconds']:.1f} s CPU",
            flush=True,
        )
    print(demo.records["summary"]["text"])
    print(f"this run: {time.time() - start:.0f} s wall", flush=True)
    return demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="demo", choices=sorted(SIZES), help="demo (make demo), ci (tests), debug")
    p.add_argument("--out", default="outputs/demo", help="output folder (reused by a second run)")
    p.add_argument(
        "--redo",
        nargs="*",
        default=[],
        metavar="PHASE",
        help=f"redo these phases and every later one ({', '.join(PHASES)}, or all)",
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads per process (1 is fastest on 2 cores)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    demo = run_demo(args.size, args.out, args.redo, args.threads)
    return 0 if demo.records["summary"]["passed"] or not demo.size.enforce_checks else 1


if __name__ == "__main__":
    sys.exit(main())
