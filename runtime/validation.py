"""Validation during training: held-out data, and when to measure it.

A recipe compiled from a spec with `data.val_path` (a separate file) or `data.val_split` (a share
of the training file) measures its loss on that data during training, with the model in eval mode
and no gradients, and logs it beside the train metrics (`val_loss` in metrics.jsonl).

* `split_off` holds out the validation samples of a training dataset: which ones depends on the
  seed alone, and the two parts never share a sample.
* `validation_due` says at which optimizer steps a run validates.

Neither draws from the global random state, so validating never changes the training run: its
data order, its dropout, or a resumed run's steps and losses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Subset

from .errors import DataError

__all__ = ["split_off", "split_sizes", "validation_due"]

# Mixed into the seed so that the held-out samples do not follow an epoch's shuffle order
# (`sampler.epoch_generator` seeds those from seed * 1_000_003 + epoch).
_SPLIT_SALT = 0x5EED_5EED


def split_sizes(num_samples: int, fraction: float) -> tuple[int, int]:
    """(training, validation) sample counts of a `fraction` split of `num_samples` samples: the
    validation part is `round(fraction * num_samples)`, and each part holds at least one."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if num_samples < 2:
        raise DataError(
            f"dataset: {num_samples} sample(s) cannot be split into training and validation "
            "data (dataloader.val_split)"
        )
    held_out = min(max(round(fraction * num_samples), 1), num_samples - 1)
    return num_samples - held_out, held_out


def split_off(dataset: Any, *, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Split `dataset` into (training, validation) parts, the latter `fraction` of its samples.

    The held-out samples are drawn by a generator seeded from `seed` alone (not the global
    random state), so the same seed always holds out the same samples; each part keeps the
    dataset's order. The parts are disjoint and together hold every sample.
    """
    train_size, val_size = split_sizes(len(dataset), fraction)
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + _SPLIT_SALT) % 2**63)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    held_out = sorted(order[:val_size])
    kept = sorted(order[val_size:])
    assert len(kept) == train_size
    return Subset(dataset, kept), Subset(dataset, held_out)


def validation_due(
    step: int, *, every_n_steps: int | None, steps_per_epoch: int, total_steps: int
) -> bool:
    """Whether a run validates after optimizer step `step`: every `every_n_steps` steps (None:
    at the end of every epoch), and always after the last step."""
    if step == total_steps:
        return True
    every = steps_per_epoch if every_n_steps is None else every_n_steps
    return step % every == 0
