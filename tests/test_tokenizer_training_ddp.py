"""Two gloo processes: the tokenizer GAN step under DDP keeps every rank's weights identical.

DDP's reducer is off (two backward passes per training_step); `all_reduce_gradients` averages the
gradients of exactly the stepped parameters. Without that sync the ranks (different data shards,
different per-rank RNG streams) would drift apart after the first step.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DDPStrategy

    from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule
    from lightning_modules.tokenizer import TokenizerModule
    from vfmvae.provenance import state_dict_sha256

    model = TokenizerModule(
        stage=0,
        tokenizer="debug",
        vfm_config={"compute_dtype": "float32"},
        loss_overrides={"lpips": 0.0},
        equivariance="debug",
        discriminator="debug",
        global_batch_size=4,
        seed=1,
    )
    initial = state_dict_sha256({n: p for n, p in model.named_parameters() if p.requires_grad})
    dm = ImageNetDataModule(
        ImageNetDataConfig(
            root=root,
            val_split=None,
            resolution=64,
            batch_size=2,
            num_workers=0,
            pin_memory=False,
            min_seen_for_bad_check=10,
        )
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=world,
        strategy=DDPStrategy(find_unused_parameters=False, process_group_backend="gloo"),
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=dm)
    g = {n: p for n, p in model.named_parameters() if n.startswith("tokenizer.") and p.requires_grad}
    d = {f"d{i}": p for i, p in enumerate(model.d_params)}
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "initial": initial,
                "g": state_dict_sha256(g),
                "d": state_dict_sha256(d),
                "ema": state_dict_sha256(model.ema.state_dict()["params"]),
                "step": trainer.global_step,
                "global_nimg": model.global_nimg,
                "batch": dm.config.batch_size,
            }
        )
    )


@pytest.mark.slow
def test_ranks_stay_identical_under_ddp(tmp_path):
    from datamodules.demo_data import DemoDataConfig, write_demo_imagefolder

    write_demo_imagefolder(tmp_path / "data" / "train", DemoDataConfig(resolution=64, num_per_class=1))
    mp.spawn(_run, args=(2, _free_port(), str(tmp_path / "data"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["initial"] == r1["initial"], "ranks must start from the same weights"
    assert r0["g"] == r1["g"] and r0["d"] == r1["d"] and r0["ema"] == r1["ema"], "ranks drifted apart"
    assert r0["g"] != r0["initial"], "no training happened"
    assert r0["step"] == r1["step"] == 2 and r0["global_nimg"] == 8 and r0["batch"] == 2  # 4 global / 2 ranks
