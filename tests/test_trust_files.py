"""Files written and found on disk: permissions of cache shards, complete vs truncated checkpoints, leftovers."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from vfmvae.utils.checkpoint_files import (
    checkpoint_problem,
    newest_complete_checkpoint,
    remove_stale_temporaries,
)
from vfmvae.utils.checkpoint_io import atomic_save


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_shards_sidecars_and_checkpoints_are_world_readable_under_umask_022(tmp_path, umask_022):
    """Failed before the fix: shards and sidecars were 0600 (mkstemp's mode), unreadable in a shared cache."""
    from datamodules.latent_shards import write_json_atomic, write_shard

    n = 2
    tensors = {k: torch.zeros(n, 4, 2, 2) for k in ("mean", "logvar", "mean_flip", "logvar_flip")}
    tensors["label"] = torch.zeros(n, dtype=torch.int64)
    write_shard(tmp_path, 0, tensors, keys=["a", "b"])
    write_json_atomic(tmp_path / "manifest.json", {"x": 1})
    atomic_save({"w": torch.ones(1)}, tmp_path / "c.ckpt")
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644) and len(modes) == 4, {k: oct(v) for k, v in modes.items()}


def _ckpt(path, step, mtime):
    atomic_save({"global_step": step, "w": torch.full((64,), float(step))}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_newest_complete_checkpoint_skips_truncated_and_takes_a_newer_periodic_one(tmp_path):
    """The reported case: last.ckpt (step 5) older than an intact step-10 checkpoint; Lightning's 'last' took 5."""
    last = _ckpt(tmp_path / "last.ckpt", 5, 1000)
    step10 = _ckpt(tmp_path / "step=000000010.ckpt", 10, 2000)
    assert newest_complete_checkpoint([tmp_path]) == (step10, [])
    # A newer, truncated last.ckpt is skipped with its reason; the intact step-10 file wins.
    _ckpt(last, 15, 3000)
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size // 2)
    os.utime(last, (3000, 3000))
    found, skipped = newest_complete_checkpoint([tmp_path])
    assert found == step10 and skipped == [(last.resolve(), "truncated or not a checkpoint (no zip central directory)")]
    assert checkpoint_problem(tmp_path / "missing.ckpt") == "missing"
    (tmp_path / "empty.ckpt").touch()
    assert checkpoint_problem(tmp_path / "empty.ckpt") == "empty"
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    assert checkpoint_problem(sharded) == "a sharded checkpoint folder without its .metadata"
    (sharded / ".metadata").write_bytes(b"x")
    assert checkpoint_problem(sharded) is None
    assert newest_complete_checkpoint([tmp_path / "nothing"]) == (None, [])


def test_remove_stale_temporaries_only_removes_leftovers_of_atomic_writes(tmp_path, caplog):
    keep = [tmp_path / n for n in ("last.ckpt", "notes.tmp.txt", "config.yaml", ".hidden")]
    stale = [tmp_path / n for n in (".last.ckpt.k2j4_x9.tmp", ".step=000000010.ckpt.abcd1234.tmp", "out.ckpt.dcp.tmp")]
    for p in keep + stale:
        p.write_bytes(b"x" * 1024)
    with caplog.at_level(logging.WARNING):
        removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("left by a checkpoint write that did not finish" in m for m in lines)
