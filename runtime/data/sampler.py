"""A sampler whose order is a pure function of (seed, epoch), so a run can resume mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["ResumableSampler", "epoch_generator"]


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
