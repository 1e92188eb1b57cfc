"""ResumableDistributedSampler: same order as torch's DistributedSampler (independent reference),
no duplicates across ranks, and a resume at position k yields the remaining order."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.samplers import ResumableDistributedSampler


@pytest.mark.parametrize(
    "n,world,drop_last", [(20, 2, False), (23, 2, False), (23, 2, True), (5, 4, False), (7, 3, True)]
)
@pytest.mark.parametrize("shuffle", [True, False])
def test_matches_torch_distributed_sampler(n, world, drop_last, shuffle):
    data = list(range(n))
    for epoch in (0, 3):
        for rank in range(world):
            ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=11, drop_last=drop_last)
            ours = ResumableDistributedSampler(
                data, num_replicas=world, rank=rank, shuffle=shuffle, seed=11, drop_last=drop_last
            )
            ref.set_epoch(epoch)
            ours.set_epoch(epoch)
            assert list(ours) == list(ref)
            assert len(ours) == len(ref) and ours.total_size == ref.total_size


def test_no_duplicates_across_two_ranks_and_epochs_differ():
    data = list(range(24))
    ranks = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=1) for r in range(2)]
    a, b = list(ranks[0]), list(ranks[1])
    assert not set(a) & set(b) and sorted(a + b) == data
    for s in ranks:
        s.set_epoch(1)
    assert list(ranks[0]) != a  # a new permutation each epoch
    assert sorted(list(ranks[0]) + list(ranks[1])) == data
    ranks[0].set_epoch(0)
    assert list(ranks[0]) == a  # deterministic per epoch


@pytest.mark.parametrize("k", [0, 1, 5, 12])
def test_resume_at_position_k_continues_same_order_two_ranks(k):
    data = list(range(24))
    full = {r: ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=4) for r in range(2)}
    for s in full.values():
        s.set_epoch(2)
    uninterrupted = {r: list(s) for r, s in full.items()}
    consumed, resumed = set(), {}
    for r in range(2):
        run = ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=4)
        run.set_epoch(2)
        consumed |= set(list(run)[:k])
        run.set_position(k)  # what SamplerStateCallback records after k samples per rank
        state = run.state_dict()
        fresh = ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=4)
        fresh.load_state_dict(state)
        fresh.set_epoch(2)  # Lightning calls set_epoch again on the resumed epoch: keeps the position
        resumed[r] = list(fresh)
        assert resumed[r] == uninterrupted[r][k:]
        assert fresh.remaining() == 12 - k and len(fresh) == 12
        fresh.set_epoch(3)  # the next epoch is complete again
        assert fresh.position == 0 and len(list(fresh)) == 12
    rest = resumed[0] + resumed[1]
    assert len(set(rest)) == len(rest) and not set(rest) & consumed
    assert sorted(rest + list(consumed)) == data


def test_resume_on_a_different_number_of_ranks():
    data = list(range(24))
    two = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=9) for r in range(2)]
    consumed = set(list(two[0])[:3]) | set(list(two[1])[:3])
    two[0].set_position(3)
    one = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=9)
    one.load_state_dict(two[0].state_dict())
    rest = list(one)
    assert one.position == 6 and len(rest) == 18
    assert not set(rest) & consumed and sorted(rest + list(consumed)) == data
    three = ResumableDistributedSampler(data, num_replicas=4, rank=0, seed=9)
    with pytest.raises(ValueError, match="divisible"):
        three.load_state_dict({**two[0].state_dict(), "position": 1})


def test_dataloader_batches_and_errors():
    data = list(range(10))
    s = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=0)
    s.load_state_dict({"epoch": 0, "position": 4})
    batches = [b.tolist() for b in DataLoader(data, batch_size=4, sampler=s)]
    assert sum(batches, []) == s.rank_indices()[4:]
    with pytest.raises(ValueError, match="rank 2"):
        ResumableDistributedSampler(data, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({**s.state_dict(), "seed": 99})
    with pytest.raises(ValueError, match="dataset_len"):
        ResumableDistributedSampler(list(range(11)), num_replicas=1, rank=0).load_state_dict(s.state_dict())
    with pytest.raises(KeyError, match="position"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="position 11"):
        s.set_position(11)
    with pytest.raises(ValueError, match="no sample per rank"):
        ResumableDistributedSampler([1], num_replicas=2, rank=0, drop_last=True)
    with pytest.raises(TypeError, match="map-style"):
        ResumableDistributedSampler(iter([1, 2]), num_replicas=1, rank=0)
