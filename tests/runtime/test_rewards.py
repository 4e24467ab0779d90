"""Reward functions: loaded from the user's file, signature-checked, their scores checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunegen.runtime.rewards import (
    RewardError,
    RewardFunctions,
    check_reward_signature,
    load_reward_function,
    parse_reward_ref,
)

REWARDS = """
import math

def exact(prompts, completions, answer, **fields):
    return [float(c == a) for c, a in zip(completions, answer, strict=True)]

def length(prompts, completions, **fields):
    return [len(c) for c in completions]

def short(prompts, completions, **fields):
    return [1.0]

def nan(prompts, completions, **fields):
    return [0.0] + [math.nan] * (len(completions) - 1)

def text(prompts, completions, **fields):
    return ["1"] * len(completions)

def raises(prompts, completions, **fields):
    raise KeyError("answer")

def one_arg(completions):
    return []

def no_kwargs(prompts, completions):
    return []

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def reward_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def _functions(path: Path, *names: str, weights: tuple[float, ...] = ()) -> RewardFunctions:
    weights = weights or (1.0,) * len(names)
    return RewardFunctions(
        {
            n: {"path": str(path), "function": n, "weight": w}
            for n, w in zip(names, weights, strict=True)
        }
    )


def test_weighted_sum_and_metrics(reward_file: Path) -> None:
    rewards = _functions(reward_file, "exact", "length", weights=(1.0, 0.5))
    total, metrics = rewards(["p"] * 3, ["ab", "c", "ab"], {"answer": ["ab", "x", "y"]}, step=1)
    assert total.tolist() == [1.0 + 0.5 * 2, 0.5 * 1, 0.5 * 2]
    assert metrics["rewards/exact/mean"] == pytest.approx(1 / 3)
    assert metrics["rewards/length/mean"] == pytest.approx(5 / 3)
    assert metrics["rewards/length/std"] == pytest.approx(
        torch.tensor([2.0, 1, 2]).std(unbiased=False).item()
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("short", "step 7: reward my_rewards.py:short returned 1 scores for 2 completions"),
        ("nan", "step 7: reward my_rewards.py:nan returned nan for completion 1 ('b')"),
        (
            "text",
            "step 7: reward my_rewards.py:text returned '1' for completion 0, expected a number",
        ),
        ("raises", "step 7: reward my_rewards.py:raises raised KeyError: 'answer'"),
    ],
)
def test_bad_scores_name_the_function_and_step(reward_file: Path, name: str, expected: str) -> None:
    with pytest.raises(RewardError) as error:
        _functions(reward_file, name)(["p", "p"], ["a", "b"], {}, step=7)
    assert str(error.value) == expected


def test_loading_errors(reward_file: Path, tmp_path: Path) -> None:
    with pytest.raises(RewardError, match=r"reward file .*nope\.py' not found"):
        load_reward_function(tmp_path / "nope.py", "exact")
    with pytest.raises(RewardError, match=r"no function 'exakt' in the file \(functions: exact,"):
        load_reward_function(reward_file, "exakt")
    with pytest.raises(RewardError, match="is a int, not a function"):
        load_reward_function(reward_file, "NOT_A_FUNCTION")
    with pytest.raises(RewardError, match=r"one_arg\(completions\) \(too few positional"):
        load_reward_function(reward_file, "one_arg")
    with pytest.raises(RewardError, match=r"no \*\*fields"):
        load_reward_function(reward_file, "no_kwargs")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(RewardError, match="failed to import: ModuleNotFoundError"):
        load_reward_function(broken, "f")


def test_signature_rules() -> None:
    def ok(prompts, completions, **kw): ...
    def named_field(prompts, completions, answer, **kw): ...
    def star(*args, **kw): ...
    def positional_only(prompts, completions, answer, /, **kw): ...

    assert check_reward_signature(ok) is None
    assert check_reward_signature(named_field) is None
    assert check_reward_signature(star) is None
    assert "positional-only" in check_reward_signature(positional_only)


def test_parse_reward_ref() -> None:
    assert parse_reward_ref("sub/r.py:exact") == ("sub/r.py", "exact")
    for bad in ("r.py", "r:exact", "r.py:", "r.py:not-a-name"):
        with pytest.raises(ValueError, match=r"is not FILE\.py:FUNCTION"):
            parse_reward_ref(bad)


def test_reward_file_imports_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "helper_for_rewards.py").write_text("BONUS = 2.0\n")
    (tmp_path / "r.py").write_text(
        "from helper_for_rewards import BONUS\n"
        "def f(prompts, completions, **kw):\n    return [BONUS] * len(completions)\n"
    )
    assert load_reward_function(tmp_path / "r.py", "f")([], ["x"]) == [2.0]
