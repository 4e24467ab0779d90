"""ShardedSampler: the ranks' batches together are one process's batches, and resume exactly."""

from __future__ import annotations

import pytest

from tunegen.runtime.data import ResumableSampler, ShardedSampler


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_split_each_global_batch_of_one_process(world_size: int, shuffle: bool) -> None:
    size, batch = 23, 2
    single = list(ResumableSampler(size, shuffle=shuffle, seed=7))
    ranks = [
        list(ShardedSampler(size, rank=r, world_size=world_size, shuffle=shuffle, seed=7))
        for r in range(world_size)
    ]
    assert len({len(mine) for mine in ranks}) == 1  # every rank takes as many batches
    global_batch = batch * world_size
    for k in range(len(ranks[0]) // batch):
        together = sorted(i for mine in ranks for i in mine[k * batch : (k + 1) * batch])
        assert together == sorted(single[k * global_batch : (k + 1) * global_batch])


def test_skip_resumes_each_rank_where_it_stopped() -> None:
    for rank in (0, 1):
        sampler = ShardedSampler(20, rank=rank, world_size=2, seed=3)
        sampler.set_epoch(4)
        full = list(sampler)
        sampler.set_epoch(4, skip=6)
        assert list(sampler) == full[6:]
        assert len(sampler) == len(full) - 6


def test_a_skip_past_this_ranks_share_is_refused() -> None:
    sampler = ShardedSampler(9, rank=1, world_size=2)
    with pytest.raises(ValueError, match="between 0 and 4"):
        sampler.set_epoch(0, skip=5)
    with pytest.raises(ValueError, match="rank must be in"):
        ShardedSampler(9, rank=2, world_size=2)
