"""A sampler whose order is a pure function of (seed, epoch), so a run can resume mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "LengthBucketSampler",
    "ResumableSampler",
    "ShardedSampler",
    "TokenBudgetSampler",
    "epoch_generator",
]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from (seed, epoch) alone, for an epoch's data order."""
    generator = torch.Generator()
    # Mix seed and epoch so that (seed, epoch + 1) never repeats (seed + 1, epoch).
    generator.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return generator


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Yield dataset indices in an order that depends only on `seed` and the epoch.

    Call `set_epoch(epoch)` at the start of every epoch. To resume a run that stopped after
    consuming `k` samples of an epoch (k = batches done * batch size), call
    `set_epoch(epoch, skip=k)`: the sampler then yields exactly the indices the interrupted run
    had not reached yet. It uses its own `torch.Generator`, so nothing else that draws random
    numbers (dropout, initialisation) can change the data order, and vice versa.
    """

    def __init__(self, dataset_len: int, *, shuffle: bool = True, seed: int = 0) -> None:
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        self.dataset_len = dataset_len
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """Select the epoch's order and drop its first `skip` indices."""
        if not 0 <= skip <= self.dataset_len:
            raise ValueError(f"skip must be between 0 and {self.dataset_len}, got {skip}")
        self.epoch = epoch
        self.skip = skip

    def order(self) -> list[int]:
        """The full order of the current epoch, before `skip` is applied."""
        if not self.shuffle:
            return list(range(self.dataset_len))
        generator = epoch_generator(self.seed, self.epoch)
        return torch.randperm(self.dataset_len, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip :])

    def __len__(self) -> int:
        return self.dataset_len - self.skip


class ShardedSampler(ResumableSampler):
    """`ResumableSampler` for one of `world_size` processes: every `world_size`-th index of the
    epoch's one global order, starting at `rank`.

    All ranks draw the same order (it depends only on seed and epoch), and each takes the same
    number of indices (the last `len % world_size` of the epoch are left out), so the ranks'
    k-th batches of size B together are exactly the k-th batch of size B x world_size of a
    single process: the same samples train in the same steps. `skip` counts this rank's
    indices (steps done x grad_accum x batch size), as the training loop computes it.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        rank: int,
        world_size: int,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset_len, shuffle=shuffle, seed=seed)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """Select the epoch's order and drop this rank's first `skip` indices."""
        per_rank = self.dataset_len // self.world_size
        if not 0 <= skip <= per_rank:
            raise ValueError(f"skip must be between 0 and {per_rank}, got {skip}")
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        usable = self.dataset_len // self.world_size * self.world_size
        mine = self.order()[self.rank : usable : self.world_size]
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.dataset_len // self.world_size - self.skip


class LengthBucketSampler(ResumableSampler):
    """Like `ResumableSampler`, but consecutive `batch_size` indices have similar lengths.

    The epoch's shuffled order is cut into windows of `window` batches; each window is sorted by
    length (longest first) and cut into batches, and the batches of all windows are shuffled.
    A batch padded to its longest sample then holds little padding, while the data still mixes
    across the epoch. Only the last incomplete batch (which `drop_last` drops) stays at the end,
    so batch boundaries line up with the DataLoader's for every `skip` that is a multiple of
    `batch_size` (which a resumed run's is: steps done * grad_accum * batch_size).
    """

    def __init__(
        self,
        lengths: list[int],
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        window: int = 64,
    ) -> None:
        super().__init__(len(lengths), shuffle=shuffle, seed=seed)
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size}, {window}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.window = window

    def order(self) -> list[int]:
        """The full order of the current epoch, before `skip` is applied."""
        generator = epoch_generator(self.seed, self.epoch)
        if self.shuffle:
            base = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            base = list(range(self.dataset_len))
        size, span = self.batch_size, self.batch_size * self.window
        batches: list[list[int]] = []
        for start in range(0, len(base), span):
            ranked = sorted(base[start : start + span], key=lambda i: -self.lengths[i])
            batches += [ranked[i : i + size] for i in range(0, len(ranked), size)]
        tail = batches.pop() if batches and len(batches[-1]) < size else []
        if self.shuffle:
            shuffled = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in shuffled]
        return [index for batch in batches for index in batch] + tail


def token_budget_batches(
    lengths: list[int], order: list[int], tokens_per_batch: int
) -> list[list[int]]:
    """Cut `order` (dataset indices), sorted longest first (ties keep `order`), into batches
    whose padded size, longest length x count, stays within `tokens_per_batch`.

    The batch boundaries depend only on the sorted lengths, so every order gives the same
    number of batches; a sample longer than the budget makes a batch of its own.
    """
    ranked = sorted(order, key=lambda index: -lengths[index])  # stable: ties keep `order`
    batches: list[list[int]] = []
    for index in ranked:
        batch = batches[-1] if batches else None
        # Sorted longest first: the batch's first sample is its longest.
        if batch and lengths[batch[0]] * (len(batch) + 1) <= tokens_per_batch:
            batch.append(index)
        else:
            batches.append([index])
    return batches


class TokenBudgetSampler(torch.utils.data.Sampler[tuple[int, ...]]):
    """Yield batches (tuples of dataset indices) of similar-length samples, each padded to at
    most `tokens_per_batch` tokens: many short samples or a few long ones per batch.

    Each epoch the samples are shuffled (which decides which equal-length samples share a
    batch), sorted by length and cut by `token_budget_batches`, and the batches shuffled, all
    with a generator seeded from (seed, epoch) alone; the number of batches is the same every
    epoch. Like `PackSampler`, it is the DataLoader's sampler with batch_size 1 over a
    `PackedDataset` (an item is a list of samples); to resume after `k` batches of an epoch,
    call `set_epoch(epoch, skip=k)`.
    """

    def __init__(
        self, lengths: list[int], tokens_per_batch: int, *, shuffle: bool = True, seed: int = 0
    ) -> None:
        if tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be at least 1, got {tokens_per_batch}")
        self.lengths = list(lengths)
        self.tokens_per_batch = tokens_per_batch
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        order = list(range(len(self.lengths)))
        self.num_batches = len(token_budget_batches(self.lengths, order, tokens_per_batch))

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """Select the epoch's batches and drop the first `skip` of them."""
        if not 0 <= skip <= self.num_batches:
            raise ValueError(f"skip must be between 0 and {self.num_batches}, got {skip}")
        self.epoch = epoch
        self.skip = skip

    def batches(self) -> list[tuple[int, ...]]:
        """All batches of the current epoch, in order, before `skip` is applied."""
        order = list(range(len(self.lengths)))
        if not self.shuffle:
            cut = token_budget_batches(self.lengths, order, self.tokens_per_batch)
            return [tuple(batch) for batch in cut]
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        cut = token_budget_batches(self.lengths, order, self.tokens_per_batch)
        shuffled = torch.randperm(len(cut), generator=generator).tolist()
        return [tuple(cut[i]) for i in shuffled]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self.batches()[self.skip :])

    def __len__(self) -> int:
        return self.num_batches - self.skip
