"""`vfmvae.tokenizer.training_state` / `handoff`: the formats of checkpoints written before the redesign keep loading.

Before the redesign the tokenizer kept one RNG stream ``{seed, cpu, cuda}`` and its EMA inside its own
checkpoint entry; now every rank's stream is saved (`RankRNGStream`) and the EMA is `EMACallback`'s.
"""

from __future__ import annotations

import pytest
import torch

from vfmvae.tokenizer.handoff import checkpoint_ema_state
from vfmvae.tokenizer.training_state import (
    check_resume_record,
    legacy_rng_state,
    move_legacy_ema,
    own_rank_state,
)
from vfmvae.utils.rng import RankRNGStream


def _draw(stream: RankRNGStream) -> torch.Tensor:
    with stream.activate(torch.device("cpu")):
        return torch.randn(5)


def test_a_single_stream_record_continues_exactly_in_one_process():
    uninterrupted = RankRNGStream(7)
    uninterrupted.bind(0, 1)
    _draw(uninterrupted)
    old = {"seed": 7, "cpu": uninterrupted.cpu_state.clone(), "cuda": None}  # the pre-redesign format
    expected = _draw(uninterrupted)
    resumed = RankRNGStream(7)
    resumed.bind(0, 1)
    resumed.load_state_dict(legacy_rng_state(old, seed=7))
    assert torch.equal(_draw(resumed), expected)
    assert resumed.seed == 7
    new = uninterrupted.state_dict()
    assert legacy_rng_state(new, seed=7) is new  # the current format passes through


def test_per_rank_records():
    assert own_rank_state({"eq_sampler": 1}, world_size=1, rank=0) == {"eq_sampler": 1}  # bare = one rank
    record = {"ranks": [{"eq_sampler": 0}, {"eq_sampler": 1}]}
    assert own_rank_state(record, world_size=2, rank=1) == {"eq_sampler": 1}
    assert own_rank_state(record, world_size=4, rank=3) is None  # another world size: keep the fresh stream


def test_the_ema_is_found_where_it_was_saved_and_moved_to_the_callback():
    old = {"tokenizer_training": {"ema": {"params": {"a": 1}}}, "callbacks": {"AtomicModelCheckpoint": {}}}
    assert checkpoint_ema_state(old, "tokenizer_training") == {"params": {"a": 1}}
    new = {"tokenizer_training": {}, "callbacks": {"EMACallback": {"ema": {"params": {"b": 2}}}}}
    assert checkpoint_ema_state(new, "tokenizer_training") == {"params": {"b": 2}}
    assert checkpoint_ema_state({"tokenizer_training": {}}, "tokenizer_training") is None
    move_legacy_ema(old, "tokenizer_training", "EMACallback")
    assert old["callbacks"]["EMACallback"] == {"ema": {"params": {"a": 1}}}
    move_legacy_ema(new, "tokenizer_training", "EMACallback")  # nothing to move; the callback's entry stays
    assert new["callbacks"]["EMACallback"] == {"ema": {"params": {"b": 2}}}


def test_a_checkpoint_that_cannot_resume_the_stage_is_named():
    with pytest.raises(KeyError, match="model.init_checkpoint"):
        check_resume_record(None, 0, "tokenizer_training")
    with pytest.raises(ValueError, match="stage-1 run but this is stage 2"):
        check_resume_record({"stage": 1}, 2, "tokenizer_training")
    assert check_resume_record({"stage": 2}, 2, "tokenizer_training") == {"stage": 2}
