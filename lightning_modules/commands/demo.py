"""The whole pipeline on the embedded demo photographs, on a CPU, in minutes (`make demo`).

    vfmvae demo [--size demo|ci|debug] [--out outputs/demo] [--redo PHASE ...] [--threads 1]

Phases (each prints its time, writes ``<out>/.done/<phase>.json`` when finished; a second run reuses
finished phases and redoes an unfinished one from its start):

1. ``data``             the embedded photographs (15 classes, ``datamodules/demo_data.py``) as ImageFolder
                        ``train`` / ``val`` splits;
2. ``tokenizer_stage0`` tokenizer stage 0 (strong alignment) with the tiny random SigLIP
                        (``configs/tokenizer/demo.yaml`` + ``configs/demo/tokenizer_stage0.yaml``);
3. ``tokenizer_stage2`` a short stage 2 (SSIM fine-tuning of the decoder) from stage 0's checkpoint
                        (``configs/demo/tokenizer_stage2.yaml``); its end-of-fit export is the demo tokenizer;
4. ``export``           reload the export folder (``load_tokenizer``) and check its weights hash;
5. ``cache_latents``    ``vfmvae cache-latents --store-images`` on the train split (ADM crop, image + flip);
6. ``reg``              tiny REG (SiT + class token) on the cache with joint alignment to the tiny random DINOv2
                        and the SE-CKNNA probe (``configs/demo/reg.yaml``); TensorBoard logs + heat-map;
7. ``sample``           ``vfmvae sample``, class-balanced: one image per class and seed -> class grid;
8. ``evaluate``         reconstruction PSNR/SSIM of the trained vs the untrained tokenizer on the held-out
                        split (paper protocol: sampled latents, 8-bit outputs truncated as the official tools
                        write them), and a demo FID of the samples vs the held-out split (`vfmvae.demo`);
9. ``t2i``              a tiny text-to-image run (debug TextDiT, query tokens through a tiny random causal LM)
                        on the same latents with the photographs' captions, ``vfmvae sample-t2i`` for every
                        caption, and the check that the prompt matters (`lightning_modules/demo_t2i.py`,
                        ``configs/demo/t2i.yaml``);
10. ``summary``         ``metrics.json``, ``summary.txt`` and the self-checks (PASS/FAIL; exit 1 on FAIL when the
                        size enforces them: ``demo`` does, the CI sizes train too briefly and only report them),
                        and the run report ``report.html`` over the four training runs (``vfmvae report``).

The sizes are YAML (`vfmvae.demo.size`): ``configs/demo/runner.yaml`` for the phases that are not training
runs, the run YAMLs for the four training runs (tokenizer stages 0 and 2, REG, text-to-image), and ``configs/demo/size_<name>/`` overlays stacked last for
``--size <name>``. Every training phase is ``vfmvae fit`` over those YAMLs plus the output
paths on the command line (printed, so it can be repeated by hand; the resolved config is saved next to the
run's logs). Everything is tiny and randomly initialised: no weight file and no network access is needed.
The numbers show the machinery works, they are not the paper's (README "Reproducing the paper").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vfmvae.demo import (
    NUM_CLASSES,
    DemoSize,
    available_sizes,
    demo_metrics,
    evaluate_demo,
    load_size,
    render_summary,
    run_configs,
    size_fingerprint,
)
from vfmvae.demo.tb_events import last_image, last_scalars
from vfmvae.utils.console import quiet_console
from vfmvae.utils.image_grid import image_grid

REPO = Path(__file__).resolve().parents[2]  # the checkout: the demo's YAMLs live in configs/
CONFIGS = REPO / "configs"

VAL_SEED = 1_000_003  # the held-out split's seed, as ImageNetDataModule.prepare_data derives it
PHASES = ("data", "tokenizer_stage0", "tokenizer_stage2", "export", "cache_latents", "reg", "sample", "evaluate")
PHASES += ("t2i", "summary")  # t2i: lightning_modules/demo_t2i.py


@dataclass
class Demo:
    """Size, output folder and the records of the finished phases (later phases read earlier ones)."""

    size: DemoSize
    out: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


# ------------------------------------------------------------------------------------------------ helpers
def run_fit(demo: Demo, run: str, *overrides: str):
    """``vfmvae fit`` over the run's YAMLs (+ the size's overlay) and ``overrides``, in this
    process (imports are paid once per demo); returns the CLI object (its trainer knows the run folder)."""
    from lightning_modules.cli import main as cli_main

    args = ["fit", *(f"--config={p}" for p in run_configs(CONFIGS, demo.size.name, run)), *overrides]
    print(f"  $ DEMO_OUT={demo.out} vfmvae " + " ".join(args), flush=True)
    try:
        return cli_main(args)
    except SystemExit as err:  # LightningCLI exits on bad configs
        raise RuntimeError(f"{run}: `vfmvae {' '.join(args)}` exited with {err.code}") from err


def run_command(run: Callable[[list[str]], Any], command: str, args: list[str]) -> Any:
    """A command's ``run(argv)`` in this process, printed as the equivalent ``vfmvae`` command line."""
    print(f"  $ vfmvae {command} " + " ".join(args), flush=True)
    return run(args)


def save_png(grid_chw: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_chw.permute(1, 2, 0).contiguous().numpy()).save(path)


def grid_of(tiles_nhwc: np.ndarray, per_row: int) -> torch.Tensor:
    """Row-major uint8 NHWC tiles -> one image, ``per_row`` tiles a row, white gaps (`vfmvae.utils.image_grid`)."""
    return image_grid(torch.from_numpy(tiles_nhwc).permute(0, 3, 1, 2), nrow=per_row, pad_value=255)


def tokenizer_record(cli) -> dict:
    run_dir = Path(cli.trainer.log_dir)
    summary = run_dir / "tokenizer_summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"the tokenizer run wrote no {summary} (TokenizerModule.on_fit_end)")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"expected the run's last checkpoint at {ckpt}")
    return {"run_dir": str(run_dir), "checkpoint": str(ckpt), "summary": json.loads(summary.read_text())}


def untrained_tokenizer(run_config: Path):
    """The tokenizer exactly as stage 0 started: `TokenizerModule` built from the stage-0 run's saved config
    (same seed, so the same random frozen VFM and initial weights; `phase_evaluate` checks the VFM)."""
    from lightning_modules.tokenizer import TokenizerModule

    args = yaml.safe_load(Path(run_config).read_text())["model"]["init_args"]
    return TokenizerModule(**{**args, "export_dir": None}).tokenizer.eval()


# ------------------------------------------------------------------------------------------------ phases
def phase_data(demo: Demo) -> dict:
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder

    s = demo.size
    shutil.rmtree(demo.path("data"), ignore_errors=True)  # a half-written tree would be refused
    for split, per_class, seed in (("train", s.train_per_class, 0), ("val", s.val_per_class, VAL_SEED)):
        config = DemoDataConfig(resolution=s.source_resolution, num_per_class=per_class, seed=seed)
        write_demo_imagefolder(demo.path("data", split), config)
    n_train, n_val = s.train_per_class * NUM_CLASSES, s.val_per_class * NUM_CLASSES
    return {"train_images": n_train, "val_images": n_val, "root": str(demo.path("data"))}


def _tokenizer_paths(demo: Demo) -> list[str]:
    return [f"--trainer.logger.init_args.save_dir={demo.path('tokenizer', 'tb')}"] + [
        f"--data.init_args.config.root={demo.path('data')}"
    ]


def phase_tokenizer_stage0(demo: Demo) -> dict:
    shutil.rmtree(demo.path("tokenizer", "tb", "demo", "stage0_strong_alignment"), ignore_errors=True)
    return tokenizer_record(run_fit(demo, "tokenizer_stage0", *_tokenizer_paths(demo)))


def phase_tokenizer_stage2(demo: Demo) -> dict:
    shutil.rmtree(demo.path("tokenizer", "tb", "demo", "stage2_ssim_fine_tuning"), ignore_errors=True)
    shutil.rmtree(demo.path("tokenizer", "export"), ignore_errors=True)
    init = demo.records["tokenizer_stage0"]["checkpoint"]
    export = demo.path("tokenizer", "export")
    overrides = [f"--model.init_args.init_checkpoint={init}", f"--model.init_args.export_dir={export}"]
    return tokenizer_record(run_fit(demo, "tokenizer_stage2", *_tokenizer_paths(demo), *overrides))


def phase_export(demo: Demo) -> dict:
    from vfmvae.provenance import state_dict_sha256
    from vfmvae.tokenizer.export import load_tokenizer, read_export_config

    folder = demo.path("tokenizer", "export")
    if not folder.is_dir():
        raise FileNotFoundError(f"stage 2 wrote no export folder {folder} (model.init_args.export_dir)")
    record = read_export_config(folder)
    weights = {k: v for k, v in load_tokenizer(folder).state_dict().items() if not k.startswith("vfm.")}
    reloaded = state_dict_sha256(weights)
    if record.get("weights_sha256") not in (None, reloaded):
        raise RuntimeError(f"export {folder}: weights hash {reloaded} != config.json's {record.get('weights_sha256')}")
    parameters = sum(v.numel() for v in weights.values())
    return {
        "folder": str(folder),
        "weights_sha256": reloaded,
        "provenance": record.get("provenance"),
        "parameters": parameters,
    }


def phase_cache_latents(demo: Demo) -> dict:
    from lightning_modules.commands.cache_latents import run as cache_run

    # Resumable by itself (finished shards are kept), but only for the same tokenizer: a redone export starts over.
    out, tokenizer_sha = demo.path("latents"), demo.records["export"]["weights_sha256"]
    stamp = out / "demo_tokenizer_sha256.txt"
    if out.exists() and (not stamp.is_file() or stamp.read_text() != tokenizer_sha):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(tokenizer_sha)
    args = f"--data-root {demo.path('data', 'train')} --tokenizer {demo.path('tokenizer', 'export')} --out {out} "
    args += f"--image-size {demo.size.resolution} --batch-size 32 --num-workers 0 --shard-size 128 --store-images "
    run_command(cache_run, "cache-latents", (args + "--accelerator cpu --devices 1").split())
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "root": str(out),
        "num_written": manifest["num_written"],
        "latent_shape": manifest["latent_shape"],
        "tokenizer_sha256": manifest["tokenizer"].get("weights_sha256"),
    }


def phase_reg(demo: Demo) -> dict:
    shutil.rmtree(demo.path("reg", "tb", "demo", "reg"), ignore_errors=True)
    save_dir = f"--trainer.logger.init_args.save_dir={demo.path('reg', 'tb')}"
    cli = run_fit(demo, "reg", save_dir, f"--data.init_args.config.latent_root={demo.path('latents')}")
    run_dir = Path(cli.trainer.log_dir)
    png, step = last_image(run_dir, "probe/cknna_heatmap")
    demo.path("se_cknna_heatmap.png").write_bytes(png)
    cknna = {t.removeprefix("probe/cknna/"): v for t, v in last_scalars(run_dir, "probe/cknna/").items()}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"expected the run's last checkpoint at {ckpt}")
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt),
        "heatmap_png": str(demo.path("se_cknna_heatmap.png")),
        "heatmap_step": step,
        "probe_cknna": cknna,
        "final_loss": last_scalars(run_dir, "loss/"),
    }


def phase_sample(demo: Demo) -> dict:
    """One class-balanced batch of 15 per seed (the network has 1000 label rows; ``balanced`` gives ids 0..14)."""
    from lightning_modules.commands.sample import run as sample_run

    s = demo.size
    shutil.rmtree(demo.path("samples"), ignore_errors=True)  # samples of an earlier REG run would be refused
    common = f"--ckpt {demo.records['reg']['checkpoint']} --tokenizer {demo.path('tokenizer', 'export')} "
    common += f"--latent-stats {demo.path('latents', 'latents_stats.pt')} --num-images {NUM_CLASSES} "
    common += (
        f"--chunk-size {NUM_CLASSES} --batch-size {NUM_CLASSES} --label-mode balanced --num-steps {s.sample_steps} "
    )
    common += f"--cfg-scale {s.cfg_scale} --accelerator cpu --devices 1"
    images, labels = [], []
    for seed in range(s.sample_seeds):
        out = demo.path("samples", f"seed{seed}")
        args = f"--out {out} --seed {seed} {common}".split()
        npz = run_command(sample_run, "sample", args) or next(out.glob("samples_*.npz"))
        with np.load(npz) as data:
            images.append(data["arr_0"])
            labels.append(data["labels"])
    arr, lab = np.concatenate(images), np.concatenate(labels)
    if set(lab.tolist()) != set(range(NUM_CLASSES)):
        raise RuntimeError(f"expected class ids 0..{NUM_CLASSES - 1} from balanced sampling, got {sorted(set(lab))}")
    np.savez(demo.path("samples", "all.npz"), arr_0=arr, labels=lab)
    order = np.stack([np.flatnonzero(lab == c)[: s.sample_seeds] for c in range(NUM_CLASSES)])  # row = class
    save_png(grid_of(arr[order.reshape(-1)], s.sample_seeds), demo.path("samples.png"))
    return {
        "num_images": len(arr),
        "npz": str(demo.path("samples", "all.npz")),
        "grid_png": str(demo.path("samples.png")),
    }


def phase_evaluate(demo: Demo) -> dict:
    from datamodules.demo_data import read_demo_split
    from vfmvae.tokenizer.export import load_tokenizer

    s, val = demo.size, demo.path("data", "val")
    # Reconstruction of held-out images (resize_center crop, as the paper's rFID), trained vs untrained.
    held_out = read_demo_split(val, "resize_center", s.resolution, range(s.recon_images))
    trained = load_tokenizer(demo.path("tokenizer", "export")).eval()
    untrained = untrained_tokenizer(Path(demo.records["tokenizer_stage0"]["run_dir"]) / "config.yaml")
    pairs = zip(trained.vfm.state_dict().values(), untrained.vfm.state_dict().values())
    if not all(torch.equal(a, b) for a, b in pairs):
        raise RuntimeError(
            "the untrained baseline's frozen VFM differs from the exported one: the baseline would not be the "
            "same tokenizer before training (TokenizerModule seeding changed?)"
        )
    with np.load(demo.records["sample"]["npz"]) as data:
        samples, labels = data["arr_0"], data["labels"]
    # Demo FID: samples vs the held-out split (ADM crop, as generation references); every class in turn of the
    # training split gives the real-vs-real floor.
    reference = read_demo_split(val, "adm_center", s.resolution)
    n_train = s.train_per_class * NUM_CLASSES
    train = read_demo_split(
        demo.path("data", "train"), "adm_center", s.resolution, range(0, n_train, max(1, n_train // len(reference)))
    )
    record, tiles = evaluate_demo(trained, untrained, held_out, samples, labels, reference, train, NUM_CLASSES)
    save_png(grid_of(tiles.reshape(-1, *tiles.shape[2:]), 3), demo.path("reconstructions.png"))
    record["reconstruction"]["grid_png"] = str(demo.path("reconstructions.png"))
    return record


def phase_summary(demo: Demo) -> dict:
    metrics = demo_metrics(demo.size, demo.records, PHASES, demo.out)
    demo.path("metrics.json").write_text(json.dumps(metrics, indent=2))
    text = render_summary(demo.size, demo.out, metrics)
    demo.path("summary.txt").write_text(text + "\n")
    from vfmvae.report import write_report  # one page over the demo's runs (docs/report.md)

    page = write_report(demo.out)
    return {"passed": metrics["passed"], "text": text + f"\nrun report: {page} (open it in a browser)"}


def phase_t2i(demo: Demo) -> dict:
    from lightning_modules.demo_t2i import phase_t2i as run_phase

    return run_phase(demo, run_fit, run_command, grid_of, save_png)


PHASE_FUNCTIONS: dict[str, Callable[[Demo], dict]] = {p: globals()[f"phase_{p}"] for p in PHASES}


# ------------------------------------------------------------------------------------------------ driver
def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, the unloaded-time estimate."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_demo(size: str = "demo", out: str | Path = "outputs/demo", redo: list[str] | None = None, threads: int = 1):
    unknown = sorted(set(redo or []) - set(PHASES) - {"all"})
    if unknown:
        raise ValueError(f"unknown phases {unknown}; the demo's phases are {list(PHASES)} (or 'all')")
    demo = Demo(load_size(CONFIGS, size), Path(out).resolve())
    torch.set_num_threads(threads)  # tiny models on a shared 2-core machine: 1 thread beats oversubscription
    os.environ["DEMO_OUT"] = str(demo.out)  # the paths of callbacks in configs/demo/reg.yaml
    stamp, fingerprint = demo.path(".done", "size.json"), size_fingerprint(CONFIGS, size)
    if stamp.is_file() and json.loads(stamp.read_text())["fingerprint"] != fingerprint:
        raise FileExistsError(
            f"{demo.out} holds a demo of size {json.loads(stamp.read_text())['size']!r} with other settings; "
            "use another --out, `make clean`, or `--redo all`"
        )
    if "all" in (redo or []):
        shutil.rmtree(demo.path(".done"), ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"size": size, "fingerprint": fingerprint}))
    redo_from = min((PHASES.index(p) for p in redo or [] if p in PHASES), default=len(PHASES))
    start = time.time()
    for i, phase in enumerate(PHASES):
        marker, tag = demo.path(".done", f"{phase}.json"), f"[{i + 1}/{len(PHASES)}] {phase}"
        if marker.is_file() and i < redo_from and phase != "summary":
            demo.records[phase] = json.loads(marker.read_text())
            print(f"{tag}: done before ({demo.records[phase]['seconds']:.1f} s), reused", flush=True)
            continue
        marker.unlink(missing_ok=True)
        print(f"{tag} ...", flush=True)
        t0, cpu0 = time.time(), _cpu_seconds()
        try:
            record = PHASE_FUNCTIONS[phase](demo)
        except Exception as err:
            print(f"{tag}: FAILED after {time.time() - t0:.1f} s: {err}", flush=True)
            raise
        record.update(seconds=round(time.time() - t0, 2), cpu_seconds=round(_cpu_seconds() - cpu0, 2))
        demo.records[phase] = record
        if phase != "summary":
            marker.write_text(json.dumps(record, indent=1, default=str))
        print(f"{tag}: {record['seconds']:.1f} s wall, {record['cpu_seconds']:.1f} s CPU", flush=True)
    print(demo.records["summary"]["text"])
    print(f"this run: {time.time() - start:.0f} s wall", flush=True)
    return demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfmvae demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="demo", choices=available_sizes(CONFIGS), help="demo (make demo), ci (tests)")
    p.add_argument("--out", default="outputs/demo", help="output folder (reused by a second run)")
    p.add_argument(
        "--redo", nargs="*", default=[], metavar="PHASE", help=f"redo these and later phases ({', '.join(PHASES)}, all)"
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads per process (1 is fastest on 2 cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    quiet_console()
    if args.threads < 1:
        p.error("--threads must be >= 1")
    demo = run_demo(args.size, args.out, args.redo, args.threads)
    return 0 if demo.records["summary"]["passed"] or not demo.size.enforce_checks else 1
