"""Exact resume and the non-finite guard (docs/scale.md, "3. Exact resume" and "6. Non-finite guard"),
single process, CPU fp32.

Resume: a run stopped after step k (mid-epoch) and resumed from its checkpoint must end with the
same weights, EMA, optimiser state, guard / RNG state and data order as the uninterrupted run,
bitwise. Diffusion uses the production data path (a real latent cache read by ImageNetDataModule's
latents mode + SamplerStateCallback), gradient accumulation and the logit-normal -> uniform switch
after the resume point. NaN injection: skipped steps change nothing, are counted, and the run stops
after N consecutive ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer
from lightning.pytorch import Callback, Trainer

from callbacks.atomic_checkpoint import AtomicModelCheckpoint
from callbacks.ema import EMACallback, find_ema
from callbacks.sampler_state import SamplerStateCallback
from datamodules.demo_latents import build_demo_latent_cache
from datamodules.imagenet import ImageNetDataConfig, ImageNetDataModule
from lightning_modules.diffusion import DiffusionModule
from vfmvae.utils.guard import NonFiniteLossError

NUM_LATENTS = 30  # 15 demo classes x 2; micro-batch 3 -> 10 micro-batches = 5 steps per epoch
MICRO, GLOBAL = 3, 6


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_latents")
    return build_demo_latent_cache(root, num_per_class=2, resolution=64, seed=0)


class KeyRecorder(Callback):
    """Keys of every micro-batch and a weight snapshot after every micro-batch."""

    def __init__(self) -> None:
        self.keys: list[list[str]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys.append(list(batch["key"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})
        self.steps.append(trainer.global_step)


def _datamodule(cache: Path) -> ImageNetDataModule:
    return ImageNetDataModule(
        ImageNetDataConfig(
            mode="latents", latent_root=str(cache), latent_policy="lightningdit", val_split=None,
            batch_size=99, num_workers=0, pin_memory=False, seed=5,
        )
    )  # fmt: skip


def _module(**kw) -> DiffusionModule:
    torch.manual_seed(0)
    args = dict(
        network="lightningdit", preset="debug", transport="lightningdit",
        network_overrides={"input_size": 4, "class_dropout_prob": 0.2},  # label dropout draws from the RNG
        transport_overrides={"uniform_from_step": 6},  # the 600k switch, after the resume point
        global_batch_size=GLOBAL, micro_batch_size=MICRO, lr=1e-3, seed=7,
    )  # fmt: skip
    args.update(kw)
    return DiffusionModule(**args)


def _trainer(tmp: Path, max_steps: int, ckpt_every: int | None, callbacks: list, **kw):
    """fp32 CPU trainer; with ``ckpt_every`` an atomic checkpoint every that many steps into ``tmp/ck``."""
    if ckpt_every:
        callbacks.append(
            AtomicModelCheckpoint(dirpath=tmp / "ck", every_n_train_steps=ckpt_every, save_top_k=-1, filename="{step}")
        )
    return cpu_trainer(
        default_root_dir=tmp,
        precision="32-true",
        max_steps=max_steps,
        enable_checkpointing=bool(ckpt_every),
        use_distributed_sampler=False,
        callbacks=callbacks,
        **kw,
    )


def _fit(module, dm, tmp: Path, max_steps: int, ckpt_every: int | None = None, ckpt_path=None, extra=()):
    recorder = KeyRecorder()
    callbacks = [EMACallback(["net"], preset="dit", decay=0.9), SamplerStateCallback(), recorder, *extra]
    trainer = _trainer(tmp, max_steps, ckpt_every, callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dataloader is not resumable" (the sampler callback handles it)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, recorder


def _ema(trainer: Trainer) -> dict:
    return next(c for c in trainer.callbacks if isinstance(c, EMACallback)).ema.state_dict()


def test_diffusion_resume_mid_epoch_is_bitwise_identical(tmp_path, latent_cache):
    total, k = 8, 3  # step 3 is mid-epoch 0 (5 steps per epoch); the run ends mid-epoch 1
    full, rec_full = _fit(_module(), _datamodule(latent_cache), tmp_path / "a", total, ckpt_every=1)
    ckpt = next((tmp_path / "a" / "ck").glob(f"step={k}*.ckpt"))
    res, rec_res = _fit(_module(), _datamodule(latent_cache), tmp_path / "b", total, ckpt_path=ckpt)
    a, b = full.lightning_module, res.lightning_module
    assert full.global_step == res.global_step == total

    # Data order: the resumed run trains exactly the micro-batches the uninterrupted one trained after step k.
    accumulation = GLOBAL // MICRO
    assert rec_res.keys == rec_full.keys[k * accumulation :]
    per_epoch = NUM_LATENTS // MICRO
    epoch0 = sorted(key for batch in rec_full.keys[:per_epoch] for key in batch)
    assert len(epoch0) == NUM_LATENTS == len(set(epoch0))  # a permutation: nothing skipped or repeated
    assert rec_full.keys[:per_epoch] != rec_full.keys[per_epoch : 2 * per_epoch][: len(rec_full.keys[:per_epoch])]

    # Weights after every micro-batch from step k on, the final EMA and optimiser state: bitwise equal.
    for wa, wb in zip(rec_full.weights[k * accumulation :], rec_res.weights):
        for name in wa:
            assert torch.equal(wa[name], wb[name]), name
    for (name, pa), pb in zip(a.net.named_parameters(), b.net.parameters()):
        assert torch.equal(pa, pb), name
    ea, eb = _ema(full), _ema(res)
    assert ea["num_updates"] == eb["num_updates"] == total
    for name in ea["params"]:
        assert torch.equal(ea["params"][name], eb["params"][name]), f"EMA {name}"
    sa, sb = full.optimizers[0].state_dict(), res.optimizers[0].state_dict()
    for i in sa["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][key], sb["state"][i][key]), f"optimizer {i}.{key}"
    assert float(sa["state"][0]["step"]) == total
    assert torch.equal(a.rng.cpu_state, b.rng.cpu_state)  # the training RNG stream continued, not reseeded
    assert a.last_time_distribution == b.last_time_distribution == "uniform"
    # And the weights did move (a resume test on a frozen model proves nothing).
    assert not torch.equal(
        rec_full.weights[0]["final_layer.linear.weight"], rec_full.weights[-1]["final_layer.linear.weight"]
    )


class Poison(Callback):
    """Put a NaN into the latents of the chosen micro-batches (counted over the run)."""

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.seen = bad, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen in self.bad:
            batch["latent"][0, 0, 0, 0] = float("nan")
        self.seen += 1


def test_nan_injection_skips_counts_and_changes_nothing(tmp_path, latent_cache):
    # Accumulation 2: micro-batch 3 is the second half of step 2's window, 4 + 5 are the whole next window.
    module = _module(max_consecutive_skips=5)
    trainer, rec = _fit(module, _datamodule(latent_cache), tmp_path, max_steps=3, extra=[Poison({3, 4, 5})])
    assert rec.steps == [0, 1, 1, 1, 1, 1, 1, 2, 2, 3]  # windows (0,1) ok, (2,3) dropped, (4,5) dropped
    assert module.guard.num_skipped == 3  # bad micro-batches counted
    # A dropped window changes no weight: after micro-batches 2..5 the weights are those of step 1.
    for i in (2, 3, 4, 5):
        for name, value in rec.weights[i].items():
            assert torch.equal(value, rec.weights[1][name]), (i, name)
    assert not torch.equal(rec.weights[7]["final_layer.linear.weight"], rec.weights[1]["final_layer.linear.weight"])
    # Optimiser and EMA saw exactly the 3 taken steps.
    assert float(trainer.optimizers[0].state_dict()["state"][0]["step"]) == 3
    assert _ema(trainer)["num_updates"] == 3
    assert trainer.callback_metrics["guard/num_skipped"] == 3


def test_nan_injection_stops_after_n_consecutive_skips(tmp_path, latent_cache):
    module = _module(max_consecutive_skips=3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive") as err:
        _fit(module, _datamodule(latent_cache), tmp_path, max_steps=5, extra=[Poison(set(range(2, 100)))])
    assert "total" in str(err.value)  # the message names the non-finite terms
    assert module.guard.num_skipped == 3


# ---------------------------------------------------------------------- tokenizer
def _tokenizer_fit(tmp: Path, data: Path, max_steps: int, ckpt_every: int | None = None, ckpt_path=None):
    from lightning_modules.tokenizer import TokenizerModule

    module = TokenizerModule(
        stage=0, tokenizer="debug", vfm_config={"compute_dtype": "float32"}, loss_overrides={"lpips": 0.0},
        equivariance="debug", discriminator="debug", global_batch_size=2, export_dir=None, seed=3,
    )  # fmt: skip
    dm = ImageNetDataModule(
        ImageNetDataConfig(root=str(data), resolution=64, batch_size=2, val_split=None, num_workers=0,
                           pin_memory=False, min_seen_for_bad_check=10, seed=2,
                           demo={"resolution": 64, "num_per_class": 1})
    )  # fmt: skip
    keys = KeyRecorder()
    keys.on_train_batch_end = lambda *a, **k: None  # keys only (the tokenizer has no `net`)
    callbacks = [SamplerStateCallback(), keys]
    trainer = _trainer(tmp, max_steps, ckpt_every, callbacks, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, keys.keys


def test_tokenizer_resume_mid_epoch_is_bitwise_identical(tmp_path):
    total, k = 4, 2  # 15 demo images, batch 2: 7 iterations per epoch, so step 2 is mid-epoch
    data = tmp_path / "data"
    full, a, keys_a = _tokenizer_fit(tmp_path / "a", data, total, ckpt_every=1)
    ckpt = next((tmp_path / "a" / "ck").glob(f"step={k}*.ckpt"))
    res, b, keys_b = _tokenizer_fit(tmp_path / "b", data, total, ckpt_path=ckpt)
    assert res.global_step == total and keys_b == keys_a[k:]
    assert (a.global_nimg, a.stage_nimg) == (b.global_nimg, b.stage_nimg) == (2 * total, 2 * total)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    ea, eb = find_ema(full).state_dict(), find_ema(res).state_dict()
    assert ea["num_updates"] == eb["num_updates"] == total
    for name in ea["params"]:
        assert torch.equal(ea["params"][name], eb["params"][name]), f"EMA {name}"
    for oa, ob in zip(full.optimizers, res.optimizers):  # G and D
        st_a, st_b = oa.state_dict()["state"], ob.state_dict()["state"]
        assert st_a.keys() == st_b.keys() and st_a
        for i in st_a:
            for key in st_a[i]:
                assert torch.equal(st_a[i][key], st_b[i][key]), f"optimizer state {i}.{key}"
    assert a.guard_g.state_dict() == b.guard_g.state_dict()
