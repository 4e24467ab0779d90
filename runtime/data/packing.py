"""Packing: fill fixed-length sequences with whole examples instead of padding each batch.

Two packers, both keeping every example whole (a prompt always stays with its response):

- `pack_examples` takes examples in dataset order and starts a new pack when the next one does
  not fit (what `tunegen data` reports as the padding a simple packer leaves).
- `best_fit_decreasing` is what training uses: examples longest first, each into the fullest pack
  it still fits in. It leaves far less padding, and the packs depend only on the lengths (and,
  among examples of equal length, on the order given), so they are the same on every run.

`PackSampler` turns the packs into a per-epoch order that is a pure function of (seed, epoch),
resumable by the number of packs consumed, exactly like `ResumableSampler` for single examples;
`PackedDataset` looks the members of one pack up in the underlying dataset.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from tunegen.runtime.data.sampler import epoch_generator

__all__ = ["PackSampler", "PackedDataset", "best_fit_decreasing", "pack_examples"]


def _check_lengths(lengths: Sequence[int], max_seq_len: int) -> None:
    for index, length in enumerate(lengths):
        if length > max_seq_len:
            raise ValueError(f"example {index} has {length} tokens, more than {max_seq_len}")


def pack_examples(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Indices of the examples in each pack, in dataset order (next-fit).

    Every length must be at most `max_seq_len` (datasets truncate before packing).
    """
    _check_lengths(lengths, max_seq_len)
    packs: list[list[int]] = []
    filled = max_seq_len  # forces a new pack for the first example
    for index, length in enumerate(lengths):
        if filled + length > max_seq_len:
            packs.append([])
            filled = 0
        packs[-1].append(index)
        filled += length
    return packs


def best_fit_decreasing(
    lengths: Sequence[int], max_seq_len: int, order: Sequence[int] | None = None
) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of the examples in each pack.

    Examples are placed longest first (ties in `order`, default index order) into the pack with
    the least room left that still holds them, or a new pack. The number of packs does not
    depend on `order`: equal lengths are interchangeable. Every length must be at most
    `max_seq_len`; an example of length 0 is skipped (it holds nothing to train on).
    """
    _check_lengths(lengths, max_seq_len)
    order = range(len(lengths)) if order is None else order
    ranked = sorted(order, key=lambda index: -lengths[index])  # stable: ties keep `order`
    packs: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, pack number), sorted
    for index in ranked:
        length = lengths[index]
        if length == 0:
            continue
        at = bisect.bisect_left(rooms, (length, -1))  # the smallest room that fits
        if at == len(rooms):
            packs.append([index])
            room, pack = max_seq_len - length, len(packs) - 1
        else:
            room, pack = rooms.pop(at)
            packs[pack].append(index)
            room -= length
        if room > 0:
            bisect.insort(rooms, (room, pack))
    return packs


class PackSampler(torch.utils.data.Sampler[tuple[int, ...]]):
    """Yield packs (tuples of dataset indices) in an order that depends only on seed and epoch.

    Each epoch, the examples are shuffled (which decides which equal-length examples share a
    pack), packed with `best_fit_decreasing`, and the packs shuffled, all with a generator seeded
    from (seed, epoch) alone. The number of packs is the same every epoch. To resume after `k`
    packs of an epoch (k = batches done * batch size), call `set_epoch(epoch, skip=k)`.
    """

    def __init__(
        self, lengths: Sequence[int], max_seq_len: int, *, shuffle: bool = True, seed: int = 0
    ) -> None:
        self.lengths = list(lengths)
        self.max_seq_len = max_seq_len
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.num_packs = len(best_fit_decreasing(self.lengths, max_seq_len))

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """Select the epoch's packs and drop the first `skip` of them."""
        if not 0 <= skip <= self.num_packs:
            raise ValueError(f"skip must be between 0 and {self.num_packs}, got {skip}")
        self.epoch = epoch
        self.skip = skip

    def packs(self) -> list[tuple[int, ...]]:
        """All packs of the current epoch, in order, before `skip` is applied."""
        if not self.shuffle:
            return [tuple(p) for p in best_fit_decreasing(self.lengths, self.max_seq_len)]
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        packs = best_fit_decreasing(self.lengths, self.max_seq_len, order)
        shuffled = torch.randperm(len(packs), generator=generator).tolist()
        return [tuple(packs[i]) for i in shuffled]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self.packs()[self.skip :])

    def __len__(self) -> int:
        return self.num_packs - self.skip


class PackedDataset(torch.utils.data.Dataset):
    """A view of `dataset` indexed by packs: item `(i, j, ...)` is `[dataset[i], dataset[j], ...]`.

    Use it with a `PackSampler` as the DataLoader's sampler and `packed_collate` as its collate
    function. `lengths` gives each example's token count (what the packer packs).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def lengths(self) -> list[int]:
        """Token count of every example of the underlying dataset."""
        return [len(self.dataset[i]["tokens"]) for i in range(len(self.dataset))]

    def __getitem__(self, pack: Sequence[int]) -> list[dict[str, list[int]]]:
        return [self.dataset[i] for i in pack]

    def __len__(self) -> int:
        return len(self.dataset)
