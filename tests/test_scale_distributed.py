"""Two CPU processes (gloo) per test, launched like torchrun does (RANK / LOCAL_RANK / WORLD_SIZE in the
environment, so Lightning joins instead of spawning); docs/scale.md, "3. Exact resume":

* DiffusionModule (REG + joint alignment + clipping + EMA) under DDP and under FSDP2
  (`lightning_modules.parallel.FSDP2Strategy`, the path `configs/trainer/fsdp_bf16.yaml` runs on GPUs):
  ranks see disjoint data, DDP replicas stay identical, FSDP2 gives the DDP result (same data, same
  per-rank RNG streams; only the reduction order differs), and an FSDP2 run resumed from its sharded
  checkpoint folder reproduces the uninterrupted one bitwise (weights, EMA, optimiser, data order).
* TokenizerModule under DDP (replicas identical, disjoint data), and its clear refusal of FSDP.
"""

from __future__ import annotations

import faulthandler
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
RANK_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(fn, tmp_path: Path, *args) -> None:
    port = _free_port()
    mp.start_processes(_entry, args=(fn, port, str(tmp_path), args), nprocs=WORLD, join=True, start_method="spawn")


def _entry(rank: int, fn, port: int, tmp: str, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
        LOCAL_RANK=str(rank), NODE_RANK="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    # A rank stuck in a collective (its peer failed) must fail the test, not hang CI: dump and exit.
    faulthandler.dump_traceback_later(RANK_TIMEOUT_S, exit=True)
    try:
        fn(rank, Path(tmp), *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _gather(obj):
    out = [None] * WORLD
    dist.all_gather_object(out, obj)
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()


# ---------------------------------------------------------------------- diffusion: DDP, FSDP2, FSDP2 resume
def _diffusion_fit(tmp: Path, cache: str, strategy, max_steps: int, ckpt_every=None, ckpt_path=None):
    from lightning.pytorch import Callback, Trainer

    from callbacks.atomic_checkpoint import AtomicModelCheckpoint
    from callbacks.ema import EMACallback
    from callbacks.joint_alignment import JointAlignmentCallback
    from callbacks.sampler_state import SamplerStateCallback
    from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule
    from lightning_modules.diffusion import DiffusionModule

    class Keys(Callback):
        def __init__(self):
            self.keys = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.keys.append(list(batch["key"]))

    torch.manual_seed(0)  # identical initial weights on every rank and in every run
    module = DiffusionModule(
        network="reg", preset="debug", transport="reg", network_overrides={"input_size": 4, "z_dims": [64]},
        global_batch_size=6, gradient_clip_norm=1.0, lr=1e-3, seed=3,
    )  # fmt: skip
    dm = ImageNetDataModule(
        ImageNetDataConfig(mode="latents", latent_root=cache, latent_policy="reg", return_images=True,
                           val_split=None, num_workers=0, pin_memory=False, seed=1)
    )  # fmt: skip
    keys = Keys()
    callbacks = [
        EMACallback(["net"], preset="dit", decay=0.5),
        JointAlignmentCallback(vfm="debug-dinov2", image_size=56),
        SamplerStateCallback(),
        keys,
    ]
    if ckpt_every:
        callbacks.append(
            AtomicModelCheckpoint(dirpath=tmp / "ck", every_n_train_steps=ckpt_every, save_top_k=-1, filename="{step}")
        )
    trainer = Trainer(
        accelerator="cpu", devices=WORLD, num_nodes=1, strategy=strategy, precision="32-true", max_steps=max_steps,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False, enable_checkpointing=bool(ckpt_every), callbacks=callbacks,
        default_root_dir=tmp,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMACallback)).ema
    return {
        "trainer": trainer,
        "module": module,
        "keys": keys.keys,
        "weights": {n: _full(p) for n, p in module.net.named_parameters()},
        "ema": {n: _full(t) for n, t in ema.state_dict()["params"].items()},
    }


def _diffusion_worker(rank: int, tmp: Path, cache: str) -> None:
    from lightning.pytorch.strategies import DDPStrategy
    from torch.distributed.tensor import DTensor

    from lightning_modules.parallel import FSDP2Strategy

    ddp = _diffusion_fit(tmp / "ddp", cache, DDPStrategy(process_group_backend="gloo"), max_steps=3)
    # Ranks read disjoint halves of each global batch; DDP replicas stay identical.
    keys = _gather(ddp["keys"])
    for b0, b1 in zip(*keys):
        assert len(b0) == len(b1) == 3 and not set(b0) & set(b1)
    w = _gather({n: v.sum().item() for n, v in ddp["weights"].items()})
    assert w[0] == w[1]

    fsdp = _diffusion_fit(tmp / "fsdp", cache, FSDP2Strategy(process_group_backend="gloo"), max_steps=3, ckpt_every=1)
    net = fsdp["module"].net
    assert all(isinstance(p, DTensor) for p in net.parameters())  # sharded, blocks and root
    assert type(net.blocks[0]).__name__.startswith("FSDP")  # each block is its own FSDP unit
    assert fsdp["keys"] == ddp["keys"]
    # Same data, same per-rank RNG streams: FSDP2 = DDP up to the reduction order.
    for name, value in ddp["weights"].items():
        torch.testing.assert_close(fsdp["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name, value in ddp["ema"].items():
        torch.testing.assert_close(fsdp["ema"][name], value, rtol=1e-5, atol=1e-6, msg=f"EMA {name}")
    assert any(n.startswith("net.projectors") for n in fsdp["ema"])  # the REG projector is trained and averaged

    # Resume from the sharded folder written after step 1 (mid-epoch) and compare bitwise.
    folder = tmp / "fsdp" / "ck" / "step=1.ckpt"
    assert folder.is_dir() and (folder / "meta.pt").is_file()
    assert not list((tmp / "fsdp" / "ck").glob("*.partial"))  # renamed into place
    res = _diffusion_fit(
        tmp / "resumed", cache, FSDP2Strategy(process_group_backend="gloo"), max_steps=3, ckpt_path=folder
    )
    assert res["keys"] == fsdp["keys"][1:]
    for name, value in fsdp["weights"].items():
        assert torch.equal(res["weights"][name], value), name
    for name, value in fsdp["ema"].items():
        assert torch.equal(res["ema"][name], value), f"EMA {name}"
    opt_a, opt_b = fsdp["trainer"].optimizers[0], res["trainer"].optimizers[0]
    for p_a, p_b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(_full(opt_a.state[p_a][key]), _full(opt_b.state[p_b][key])), key
    if rank == 0:
        torch.save({"weights": fsdp["weights"], "ema": fsdp["ema"]}, tmp / "fsdp_final.pt")


def test_diffusion_ddp_and_fsdp2_on_two_cpu_processes(tmp_path):
    from datamodules.demo_latents import build_demo_latent_cache

    # 15 classes x 2 latents with their 64 px crops (REG's alignment targets); global batch 6 = 2 x 3.
    cache = build_demo_latent_cache(tmp_path / "demo", num_per_class=2, resolution=64, seed=0)
    _launch(_diffusion_worker, tmp_path, str(cache))

    # The sharded folder of the last step consolidates into one file with the full weights and EMA.
    from vfmvae.utils.fsdp_checkpoint import consolidate_checkpoint

    single = consolidate_checkpoint(
        tmp_path / "fsdp" / "ck" / "step=3.ckpt", tmp_path / "step3.ckpt", trust_pickle=True
    )
    ckpt = torch.load(single, map_location="cpu", weights_only=False)
    final = torch.load(tmp_path / "fsdp_final.pt", weights_only=False)
    assert ckpt["global_step"] == 3
    for name, value in final["weights"].items():
        assert torch.equal(ckpt["state_dict"][f"net.{name}"], value), name
    ema = next(v["ema"] for k, v in ckpt["callbacks"].items() if k.startswith("EMACallback"))
    for name, value in final["ema"].items():
        assert torch.equal(ema["params"][name], value), name


# ---------------------------------------------------------------------- tokenizer: DDP and the FSDP refusal
def _tokenizer_fit(tmp: Path, strategy, max_steps: int = 2):
    from lightning.pytorch import Callback, Trainer

    from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule
    from lightning_modules.tokenizer import TokenizerModule

    class Keys(Callback):
        def __init__(self):
            self.keys = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.keys.append(list(batch["key"]))

    module = TokenizerModule(
        stage=0, tokenizer="debug", vfm_config={"compute_dtype": "float32"}, loss_overrides={"lpips": 0.0},
        equivariance="debug", discriminator="debug", global_batch_size=4, export_dir=None, seed=3,
    )  # fmt: skip
    dm = ImageNetDataModule(
        ImageNetDataConfig(root=str(tmp / "data"), resolution=64, batch_size=2, val_split=None, num_workers=0,
                           pin_memory=False, min_seen_for_bad_check=10,
                           demo={"resolution": 64, "num_per_class": 1})
    )  # fmt: skip
    keys = Keys()
    trainer = Trainer(
        accelerator="cpu", devices=WORLD, num_nodes=1, strategy=strategy, precision="32-true", max_steps=max_steps,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False, enable_checkpointing=False, callbacks=[keys],
        default_root_dir=tmp,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return module, keys.keys


def _tokenizer_worker(rank: int, tmp: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_modules.parallel import FSDP2Strategy

    module, keys = _tokenizer_fit(tmp, DDPStrategy(process_group_backend="gloo", find_unused_parameters=False))
    assert module.global_nimg == 2 * 4  # global images, not per rank
    k0, k1 = _gather(keys)
    assert len(k0) == len(k1) == 2 and all(not set(a) & set(b) for a, b in zip(k0, k1))
    trained = {n: p.detach().sum().item() for m in module.g_modules.values() for n, p in m.named_parameters()}
    replicas = _gather(trained)
    assert replicas[0] == replicas[1]  # the module's own gradient all-reduce keeps replicas identical
    from callbacks.ema import find_ema

    ema = _gather({k: v.sum().item() for k, v in find_ema(module.trainer).state_dict()["params"].items()})
    assert ema[0] == ema[1]
    try:
        _tokenizer_fit(tmp / "fsdp", FSDP2Strategy(process_group_backend="gloo"))
    except ValueError as err:
        assert "TokenizerModule does not support the FSDP2Strategy strategy" in str(err), err
    else:
        raise AssertionError("TokenizerModule accepted FSDP")


def test_tokenizer_ddp_on_two_cpu_processes_and_fsdp_refused(tmp_path):
    _launch(_tokenizer_worker, tmp_path)
