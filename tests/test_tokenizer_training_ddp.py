"""Two gloo processes: the tokenizer GAN step under DDP, and an exact resume on every rank.

DDP's reducer is off (two backward passes per training_step); `all_reduce_gradients` averages the
gradients of exactly the stepped parameters. Without that sync the ranks (different data shards,
different per-rank RNG streams) would drift apart after the first step.

Each rank draws from its own streams (`seed * world + rank`): the step's torch stream
(`RankRNGStream`: posterior samples, DiffAugment, D crops) and the equivariance sampler. A checkpoint
holds both ranks' streams, so a run resumed on two ranks equals the uninterrupted run on each rank; a
checkpoint that kept only rank 0's stream (as before the redesign) would give rank 1 rank 0's draws,
other averaged gradients, and other weights.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow
STEPS, RESUME_AT = 3, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit(tmp: Path, data: Path, ckpt_every: int | None = None, ckpt_path: Path | None = None):
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DDPStrategy

    from callbacks.atomic_checkpoint import AtomicModelCheckpoint
    from callbacks.sampler_state import SamplerStateCallback
    from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule
    from lightning_modules.tokenizer import TokenizerModule

    model = TokenizerModule(
        stage=0, tokenizer="debug", vfm_config={"compute_dtype": "float32"}, loss_overrides={"lpips": 0.0},
        equivariance="debug", discriminator="debug", global_batch_size=4, seed=1,
    )  # fmt: skip
    dm = ImageNetDataModule(
        ImageNetDataConfig(root=str(data), val_split=None, resolution=64, batch_size=2, num_workers=0,
                           pin_memory=False, min_seen_for_bad_check=10, demo={"resolution": 64, "num_per_class": 1})
    )  # fmt: skip
    callbacks = [SamplerStateCallback()]
    if ckpt_every:
        callbacks.append(AtomicModelCheckpoint(dirpath=tmp / "ck", every_n_train_steps=ckpt_every, filename="{step}"))
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(find_unused_parameters=False, process_group_backend="gloo"),
        max_steps=STEPS, logger=False, enable_checkpointing=bool(ckpt_every), enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=tmp, callbacks=callbacks,
    )  # fmt: skip
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model, initial


def _run(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank), NODE_RANK="0", HF_HUB_OFFLINE="1",
    )  # fmt: skip
    torch.set_num_threads(1)
    from callbacks.ema import find_ema
    from vfmvae.provenance import state_dict_sha256

    tmp_path = Path(tmp)
    full, a, initial = _fit(tmp_path / "full", tmp_path / "data", ckpt_every=RESUME_AT)
    ckpt = tmp_path / "full" / "ck" / f"step={RESUME_AT}.ckpt"
    resumed, b, _ = _fit(tmp_path / "resumed", tmp_path / "data", ckpt_path=ckpt)
    g = {n: p for n, p in a.named_parameters() if p.requires_grad}
    record = {
        "initial": state_dict_sha256(initial),
        "g": state_dict_sha256(g),
        "ema": state_dict_sha256(find_ema(full).state_dict()["params"]),
        "step": full.global_step,
        "global_nimg": a.global_nimg,
        "batch": full.datamodule.config.batch_size,
        # The resumed run against the uninterrupted one, on this rank.
        "resumed_step": resumed.global_step,
        # `decoder.mapping.w_avg` is a rank-local running mean (truncation only, psi = 1 here: never used), not
        # synchronised across ranks; a checkpoint keeps rank 0's. Everything else must match.
        "resumed_weights_equal": all(
            torch.equal(p, b.state_dict()[n]) for n, p in a.state_dict().items() if not n.endswith("w_avg")
        ),
        "resumed_ema_equal": state_dict_sha256(find_ema(resumed).state_dict()["params"])
        == state_dict_sha256(find_ema(full).state_dict()["params"]),
        "resumed_d_equal": all(torch.equal(x, y) for x, y in zip(a.d_params, b.d_params)),
        "resumed_rng_equal": torch.equal(a.rng.cpu_state, b.rng.cpu_state),
        "resumed_eq_equal": a.objective.sampler.rng.getstate() == b.objective.sampler.rng.getstate(),
        "rng_state": state_dict_sha256({"cpu": a.rng.cpu_state}),
    }
    (tmp_path / f"rank{rank}.json").write_text(json.dumps(record))


def test_ranks_stay_identical_and_resume_exactly_on_every_rank(tmp_path):
    mp.spawn(_run, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["initial"] == r1["initial"], "ranks must start from the same weights"
    assert r0["g"] == r1["g"] and r0["ema"] == r1["ema"], "ranks drifted apart"
    assert r0["g"] != r0["initial"], "no training happened"
    assert r0["step"] == r1["step"] == STEPS and r0["global_nimg"] == 4 * STEPS and r0["batch"] == 2  # 4 / 2 ranks
    assert r0["rng_state"] != r1["rng_state"], "each rank draws from its own stream"
    for r in (r0, r1):
        assert r["resumed_step"] == STEPS
        assert r["resumed_rng_equal"] and r["resumed_eq_equal"], "a rank's random streams were not restored"
        assert r["resumed_weights_equal"] and r["resumed_d_equal"] and r["resumed_ema_equal"], "resume is not exact"
    saved = torch.load(tmp_path / "full" / "ck" / f"step={RESUME_AT}.ckpt", map_location="cpu", weights_only=False)
    state = saved["tokenizer_training"]
    assert state["rng"]["world_size"] == 2 and len(state["objective"]["ranks"]) == 2  # every rank's streams
