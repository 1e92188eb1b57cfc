"""The text-conditioned DiT under FSDP2 (the sharding plan of `vfmvae/dit/parallelize.py`) on two CPU
processes: every TextDiTBlock is its own FSDP unit, the root holds the text path (frozen LM included), and
two steps give the DDP result up to the reduction order."""

from __future__ import annotations

import os
import socket
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow
WORLD = 2


def _entry(rank: int, port: int, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    try:
        _worker(Path(tmp))
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _fit(tmp: Path, strategy):
    from lightning.pytorch import Trainer

    from callbacks.ema import EMACallback
    from datamodules.captions_demo import DemoCaptionDataModule
    from lightning_modules.diffusion import DiffusionModule

    torch.manual_seed(0)
    module = DiffusionModule(
        network="text_dit",
        preset="debug",
        global_batch_size=6,
        lr=1e-3,
        seed=3,
        network_overrides={"input_size": 4, "num_queries": 3, "text_max_length": 12},
    )
    dm = DemoCaptionDataModule(root=str(tmp.parent / "data"), num_per_class=1, batch_size=3)
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=strategy,
        precision="32-true",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        callbacks=[EMACallback(["net"], preset="dit", decay=0.5)],
        default_root_dir=tmp,
    )
    trainer.fit(module, datamodule=dm)
    full = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone())
        for n, p in module.net.named_parameters()
        if p.requires_grad
    }
    return module, full


def _worker(tmp: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy
    from torch.distributed.tensor import DTensor

    from lightning_modules.parallel import FSDP2Strategy

    _, ddp = _fit(tmp / "ddp", DDPStrategy(process_group_backend="gloo"))
    module, fsdp = _fit(tmp / "fsdp", FSDP2Strategy(process_group_backend="gloo"))
    net = module.net
    assert type(net.blocks[0]).__name__.startswith("FSDP")  # each TextDiTBlock is its own FSDP unit
    assert isinstance(net.text_encoder.queries, DTensor) and isinstance(net.blocks[0].cross_attn.q.weight, DTensor)
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(v, 0 * v) for n, v in fsdp.items() if "cross_attn.proj" in n)  # the text path trained


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_text_dit_fsdp2_matches_ddp_on_two_cpu_processes(tmp_path):
    from datamodules.captions_demo import DemoCaptionDataModule

    DemoCaptionDataModule(root=str(tmp_path / "data"), num_per_class=1, batch_size=3).prepare_data()
    mp.start_processes(
        _entry, args=(_free_port(), str(tmp_path / "run")), nprocs=WORLD, join=True, start_method="spawn"
    )
