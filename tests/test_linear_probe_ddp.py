"""The linear probe on 1 and on 2 gloo processes at the same global batch gives the same result.

Why it can: the training sampler splits one seeded permutation over the ranks so the ranks' micro-batches together
are the single-process batch; the flips are drawn per (seed, epoch, index); the parameter-free BatchNorm takes its
statistics over the global batch; DDP averages equal-sized micro-batch gradients; validation sums correct
predictions over the ranks without padding. Only the order of float additions differs.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(root: Path, out: Path, devices: int) -> None:
    from lightning_modules.cli import main as cli_main
    from lightning_modules.commands.linear_probe import build_parser, cli_arguments

    args = build_parser().parse_args(
        ["--protocol", "demo", "--global-batch-size", "20", "--epochs", "6", "--warmup-epochs", "1",
         "--accelerator", "cpu", "--devices", str(devices), "--num-workers", "0", "--out", str(out)]
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = cli_main(cli_arguments(args, str(root / "latents" / "train"), str(root / "latents" / "val"), out))
    if cli.trainer.is_global_zero:
        torch.save({k: v.clone() for k, v in cli.model.probe.state_dict().items()}, out / "probe.pt")


def _entry(rank: int, port: int, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
        NODE_RANK="0", HF_HUB_OFFLINE="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        _probe(Path(root), Path(root) / "two", devices=2)
    except BaseException:
        traceback.print_exc()
        raise


def test_linear_probe_same_on_one_and_two_processes(tmp_path):
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder
    from lightning_modules.latent_cache import cache_image_folder
    from vfmvae.tokenizer.sources import load_any_tokenizer

    tokenizer = load_any_tokenizer(None, "debug-vavae")
    for split, n, seed in (("train", 4, 0), ("val", 2, 1)):
        write_demo_imagefolder(tmp_path / "data" / split, DemoDataConfig(resolution=64, num_per_class=n, seed=seed))
        cache_image_folder(tokenizer, str(tmp_path / "data" / split), str(tmp_path / "latents" / split),
                           image_size=64, accelerator="cpu", devices=1)  # fmt: skip
    _probe(tmp_path, tmp_path / "one", devices=1)
    mp.start_processes(_entry, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")

    one, two = (json.loads((tmp_path / d / "linear_probe.json").read_text()) for d in ("one", "two"))
    assert one["protocol"]["world_size"] == 1 and two["protocol"]["world_size"] == 2
    assert one["results"]["num_images"] == two["results"]["num_images"] == 30  # every validation latent once
    assert one["results"]["top1"] == two["results"]["top1"]
    w1, w2 = (torch.load(tmp_path / d / "probe.pt") for d in ("one", "two"))
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], atol=1e-5, rtol=1e-4)
    # The runs trained: the head moved away from its 0.01-std initialisation.
    assert w1["head.weight"].std() > 0.02
