"""Validation's runtime pieces: the held-out split, when a run validates, the best checkpoint,
and how the progress summary and `tunegen plot` read validation records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunegen.compiler.cli.plot import load_metrics
from tunegen.runtime.checkpointing import Checkpointer
from tunegen.runtime.errors import ConfigError, DataError
from tunegen.runtime.progress import Progress
from tunegen.runtime.validation import split_off, split_sizes, validation_due

# -- the held-out split --------------------------------------------------------------------------


def test_the_split_is_disjoint_complete_and_sized_by_the_fraction() -> None:
    dataset = [f"sample {i}" for i in range(1000)]
    train, val = split_off(dataset, fraction=0.1, seed=3)
    assert (len(train), len(val)) == (900, 100)
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(1000))
    # Each part keeps the dataset's order and reads its samples.
    assert list(train.indices) == sorted(train.indices)
    assert [val[i] for i in range(3)] == [dataset[i] for i in val.indices[:3]]


def test_the_split_depends_on_the_seed_alone() -> None:
    dataset = list(range(500))
    first = split_off(dataset, fraction=0.2, seed=7)[1].indices
    torch.manual_seed(12345)  # the global random state plays no part...
    torch.rand(10)
    state = torch.get_rng_state()
    again = split_off(dataset, fraction=0.2, seed=7)[1].indices
    assert again == first
    assert torch.equal(torch.get_rng_state(), state)  # ...and is not drawn from
    assert split_off(dataset, fraction=0.2, seed=8)[1].indices != first
    # Not simply the first samples, nor the seed's first epoch order.
    assert first != list(range(100))
    epoch_order = torch.randperm(500, generator=torch.Generator().manual_seed(7 * 1_000_003))
    assert first != sorted(epoch_order[:100].tolist())


@pytest.mark.parametrize(
    "samples, fraction, expected",
    [(10, 0.25, (8, 2)), (10, 0.01, (9, 1)), (10, 0.99, (1, 9)), (2, 0.5, (1, 1))],
)
def test_split_sizes_keep_a_sample_on_each_side(
    samples: int, fraction: float, expected: tuple[int, int]
) -> None:
    assert split_sizes(samples, fraction) == expected


def test_one_sample_cannot_be_split() -> None:
    with pytest.raises(DataError, match="1 sample\\(s\\) cannot be split"):
        split_sizes(1, 0.5)


# -- when a run validates ------------------------------------------------------------------------


def test_validation_steps() -> None:
    def due(every: int | None, total: int = 10, per_epoch: int = 4) -> list[int]:
        return [
            step
            for step in range(1, total + 1)
            if validation_due(
                step, every_n_steps=every, steps_per_epoch=per_epoch, total_steps=total
            )
        ]

    assert due(3) == [3, 6, 9, 10]  # every 3 steps, and the last
    assert due(None) == [4, 8, 10]  # each epoch's end, and the last
    assert due(5) == [5, 10]
    assert due(20) == [10]


# -- keep_best -----------------------------------------------------------------------------------


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4,), value)}


def test_save_best_keeps_the_lowest_and_keep_last_never_prunes_it(tmp_path: Path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path, keep_last=1, keep_best="val_loss")
    written = []
    for step, val_loss in [(1, 2.0), (2, 1.5), (3, 1.7), (4, 1.5), (5, 1.2), (6, 1.9)]:
        checkpointer.save(step, _weights(step))
        best = checkpointer.save_best(step, _weights(step), metrics={"val_loss": val_loss})
        written.append(best is not None)
    # Only a strictly lower loss replaces the kept weights.
    assert written == [True, True, False, False, True, False]
    assert checkpointer.best() == (5, 1.2)
    weights, state = checkpointer.load(tmp_path / "best")
    assert torch.equal(weights["w"], torch.full((4,), 5.0)) and state is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_000006"]
    assert checkpointer.latest() == tmp_path / "step_000006"  # resuming never picks best/


def test_save_best_skips_a_nonfinite_loss_and_needs_a_metric(tmp_path: Path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path, keep_best="val_loss")
    assert checkpointer.save_best(1, _weights(1), metrics={"val_loss": float("nan")}) is None
    assert checkpointer.best() is None
    with pytest.raises(ConfigError, match=r"checkpointer\.keep_best: expected null or val_loss"):
        Checkpointer(output_dir=tmp_path, keep_best="accuracy")
    with pytest.raises(ConfigError, match="keep_best is null"):
        Checkpointer(output_dir=tmp_path).save_best(1, _weights(1), metrics={"val_loss": 1.0})


# -- the summary and the plot --------------------------------------------------------------------


def test_the_summary_shows_the_best_validation_loss_also_from_before_a_resume(
    tmp_path: Path,
) -> None:
    records = [
        {"step": 2, "loss": 3.0},
        {"step": 2, "val_loss": 2.5},
        {"step": 4, "val_loss": 2.25},
        {"event": "resume", "step": 4},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    progress = Progress(total_steps=8, steps_per_epoch=8, start_step=4, mode="lines")
    progress.update(6, {"loss": 2.0})
    progress.validation(6, {"val_loss": 2.4})
    assert progress.best_val == (2.4, 6)  # this process saw only step 6
    assert "val 2.4000" in progress.line()
    lines = progress.summary_lines(tmp_path)
    assert "  best val loss      2.2500 at step 4" in lines


def test_plot_merges_the_train_and_validation_records_of_a_step(tmp_path: Path) -> None:
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "val_loss": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_metrics(tmp_path) == [
        {"step": 1.0, "loss": 3.0},
        {"step": 2.0, "loss": 2.0, "val_loss": 2.5},
    ]
