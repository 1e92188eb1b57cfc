"""Two gloo ranks on CPU: EMA on FSDP2-sharded (DTensor) parameters matches an unsharded EMA
without gathering; the guard's skip decision is identical on all ranks; the sampler splits
the data without duplicates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.slow


def _worker(rank: int, world: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _check_fsdp2_ema(rank, world)
        _check_guard(rank)
        _check_sampler(rank, world)
    finally:
        dist.destroy_process_group()


def _check_fsdp2_ema(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    from vfmvae.utils.ema import EMA, EMAConfig

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    sharded = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    sharded.load_state_dict(ref.state_dict())
    mesh = init_device_mesh("cpu", (world,))
    for layer in sharded:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())

    cfg = EMAConfig(mode="halflife", halflife_nimg=16.0, rampup=0.5)
    ema_ref, ema_sh = EMA(ref, cfg), EMA(sharded, cfg)
    assert all(isinstance(s, DTensor) for s in ema_sh.shadow_params)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for p_ref, p_sh in zip(ref.parameters(), sharded.parameters()):
                new = torch.randn(p_ref.shape, generator=g)
                p_ref.copy_(new)
                p_sh.copy_(distribute_tensor(new, p_sh.device_mesh, p_sh.placements))
        # The update works on local shards: no collective at all (CommDebugMode counts them).
        with CommDebugMode() as comm:
            ema_sh.update(batch_size=8)
        assert comm.get_total_counts() == 0, comm.get_comm_counts()
        ema_ref.update(batch_size=8)
    with CommDebugMode() as comm:  # the counter does see a gather
        ema_sh.shadow_params[0].full_tensor()
    assert comm.get_total_counts() > 0
    for s_ref, s_sh in zip(ema_ref.shadow_params, ema_sh.shadow_params):
        torch.testing.assert_close(s_sh.full_tensor(), s_ref, rtol=1e-6, atol=1e-6)
    raw = [p.full_tensor().clone() for p in sharded.parameters()]
    with ema_sh.swap():
        for p, s_ref in zip(sharded.parameters(), ema_ref.shadow_params):
            torch.testing.assert_close(p.full_tensor(), s_ref, rtol=1e-6, atol=1e-6)
    for p, r in zip(sharded.parameters(), raw):
        assert torch.equal(p.full_tensor(), r)
    state = ema_sh.state_dict()
    assert all(isinstance(t, DTensor) for t in state["params"].values())


def _check_guard(rank: int) -> None:
    from vfmvae.utils.guard import NonFiniteGuard

    guard = NonFiniteGuard(max_consecutive_skips=3)
    ok = guard.check({"total": torch.tensor(1.0), "l1": torch.tensor(0.5)})
    assert ok
    # Only rank 1 sees a NaN; both ranks must skip.
    bad = float("nan") if rank == 1 else 0.5
    assert guard.check({"total": torch.tensor(1.0), "l1": torch.tensor(bad)}) is False
    assert guard.last_bad_terms == (["l1"] if rank == 1 else ["<another rank>"])
    assert guard.num_skipped == 1 and guard.consecutive_skips == 1


def _check_sampler(rank: int, world: int) -> None:
    from datamodules.samplers import ResumableDistributedSampler

    data = list(range(20))
    sampler = ResumableDistributedSampler(data, shuffle=True, seed=5)  # ranks from the process group
    assert (sampler.rank, sampler.num_replicas) == (rank, world)
    mine = torch.tensor(list(sampler))
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    flat = torch.cat(gathered).tolist()
    assert sorted(flat) == data and len(set(flat)) == len(flat) == math.ceil(20 / world) * world


def test_two_rank_ema_guard_sampler(tmp_path):
    # fork: the children reuse the imported torch (spawn re-imports it, ~10 s per rank here).
    mp.start_processes(_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True, start_method="fork")
