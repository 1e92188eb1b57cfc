"""Phase ``t2i`` of `vfmvae demo` (docs/text_to_image.md, "Demo"): a tiny text-to-image run on the demo
latents with the photographs' captions, sampled for every caption, and the self-check that the prompt matters.

1. the demo captions (`datamodules.captions_demo.DEMO_CAPTIONS`, one per photograph class) are stored beside the
   demo latent cache as its caption sidecar (`datamodules.captions_cache`), from each latent's class;
2. ``python -m lightning_modules fit`` over ``configs/demo/t2i.yaml`` (+ the size's overlay) trains the debug
   TextDiT (query tokens through a tiny random causal LM) through the unchanged `DiffusionModule`;
3. `vfmvae sample-t2i` draws ``sample_seeds`` images for each of the 15 captions with CFG, decoded by the demo
   tokenizer; ``t2i_samples.png`` has one row per caption;
4. self-check: the samples' mean colour differs between captions (one-way ANOVA, p < 0.01), as the class
   check of the REG samples (`vfmvae.demo.evaluation.class_difference_test`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from datamodules.captions_cache import write_caption_sidecar
from datamodules.captions_demo import demo_caption_of
from datamodules.demo_data import DEMO_CLASSES
from datamodules.latent_dataset import LatentDataset
from vfmvae.demo.evaluation import class_difference_test
from vfmvae.demo.tb_events import last_scalars

__all__ = ["phase_t2i", "T2I_CHECK"]

T2I_CHECK = "samples differ between prompts (ANOVA of mean colour, p < 0.01)"


@rank_zero_only
def _write_captions(cache: Path) -> int:
    latents = LatentDataset(cache, normalize=False)
    captions = {}
    for i in range(len(latents)):
        item = latents[i]
        captions[item["key"]] = demo_caption_of(item["label"])
    return write_caption_sidecar(cache, captions)["num_kept"]


def phase_t2i(demo: Any, run_fit, run_command, grid_of, save_png) -> dict:
    """Run the phase for the demo runner (its helpers passed in); returns the phase record."""
    from lightning_modules.commands.sample_t2i import run as sample_t2i

    s, cache = demo.size, demo.path("latents")
    captioned = _write_captions(cache)
    shutil.rmtree(demo.path("t2i"), ignore_errors=True)
    cli = run_fit(
        demo,
        "t2i",
        f"--trainer.logger.init_args.save_dir={demo.path('t2i', 'tb')}",
        f"--data.init_args.latent_root={cache}",
    )
    run_dir = Path(cli.trainer.log_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"expected the run's last checkpoint at {ckpt}")
    prompts = [demo_caption_of(c) for c in range(len(DEMO_CLASSES))]
    prompts_file = demo.path("t2i", "prompts.txt")
    prompts_file.write_text("\n".join(prompts) + "\n")
    out = demo.path("t2i", "samples")
    args = f"--ckpt {ckpt} --prompts {prompts_file} --tokenizer {demo.path('tokenizer', 'export')} "
    args += f"--latent-stats {cache / 'latents_stats.pt'} --out {out} --per-prompt {s.sample_seeds} "
    args += f"--num-steps {s.sample_steps} --cfg-scale {s.cfg_scale} --batch-size {len(prompts)} "
    args += "--accelerator cpu --devices 1"
    run_command(sample_t2i, "sample-t2i", args.split())
    with np.load(next(out.glob("samples_*.npz"))) as data:
        images = data["arr_0"]
    prompt_ids = np.arange(len(images)) % len(prompts)  # image i was drawn for prompt i mod P
    test = class_difference_test(images, prompt_ids)
    order = np.stack([np.flatnonzero(prompt_ids == p) for p in range(len(prompts))])  # row = prompt
    save_png(grid_of(images[order.reshape(-1)], s.sample_seeds), demo.path("t2i_samples.png"))
    final = last_scalars(run_dir, "loss/")
    passed = test["p_value"] < 0.01
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt),
        "captioned_latents": captioned,
        "num_samples": int(len(images)),
        "grid_png": str(demo.path("t2i_samples.png")),
        "final_loss": final,
        "prompt_difference": test,
        "self_check": {"check": T2I_CHECK, "passed": bool(passed), "detail": f"p = {test['p_value']:.2g}"},
        "prompts": json.loads(json.dumps(prompts)),
    }
