"""Reward functions for GRPO: the user's own Python, loaded from files next to the spec.

A reward function scores a batch of completions:

    def my_reward(prompts, completions, **fields) -> list[float]

`prompts[i]` is the prompt of completion `i` as the data file holds it (a string, or a list of
chat messages), `completions[i]` the decoded completion text, and every other field of the
prompt records arrives as a keyword argument holding one value per completion (`answer=[...]`).
It returns one number per completion. The config names each function by file and function name
(`path: rewards.py`, `function: exact_match`) and weights it; the recipe's reward is the weighted
sum. Functions are imported from their file (never copied into generated code), so an edit to the
file takes effect on the next run.

Everything a user can get wrong is a `RewardError` (one line, exit status 2): a missing file, a
file that does not import, a missing function, a signature that cannot take
`(prompts, completions, **fields)`, and at run time a result of the wrong length, a value that is
not a number, or a NaN/inf (naming the function and the step).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunegen.runtime.errors import TunegenError, one_line

__all__ = [
    "RewardError",
    "RewardFunction",
    "RewardFunctions",
    "check_reward_signature",
    "load_reward_function",
    "parse_reward_ref",
]


class RewardError(TunegenError):
    """A reward function is missing, cannot be called as a reward, or returned bad scores."""


@dataclass(frozen=True)
class RewardFunction:
    """One loaded reward function: its name in the config and metrics (`exact_match`), where it
    comes from (`rewards.py:exact_match`, for messages), the callable and its weight."""

    name: str
    source: str
    function: Callable[..., Sequence[float]]
    weight: float = 1.0


def parse_reward_ref(ref: str) -> tuple[str, str]:
    """`"path/to/file.py:function"` -> `("path/to/file.py", "function")`; ValueError if malformed."""
    path, sep, function = ref.rpartition(":")
    if not sep or not path or not function.isidentifier() or not path.endswith(".py"):
        raise ValueError(f"{ref!r} is not FILE.py:FUNCTION (e.g. rewards.py:exact_match)")
    return path, function


def load_reward_function(
    path: str | Path, function: str, *, shown_as: str | None = None
) -> Callable[..., Sequence[float]]:
    """Import `function` from the Python file `path` and check that it can be called as a reward.

    The file's folder is on `sys.path` while it is imported, so it may import its neighbours.
    Messages name the file as `shown_as` (as the user wrote it), by default as `path`.
    """
    path = Path(path)
    shown = shown_as or path.as_posix()
    where = f"{shown}:{function}"
    if not path.is_file():
        raise RewardError(f"reward file {shown!r} not found (looked in {path.parent})")
    module = _import_file(path, shown)
    found = getattr(module, function, None)
    if found is None:
        names = [n for n, v in vars(module).items() if inspect.isfunction(v) and n[0] != "_"]
        listed = ", ".join(names) or "none"
        raise RewardError(f"{where}: no function {function!r} in the file (functions: {listed})")
    if not callable(found):
        raise RewardError(f"{where}: is a {type(found).__name__}, not a function")
    problem = check_reward_signature(found)
    if problem is not None:
        raise RewardError(f"{where}: {problem}")
    return found


def _import_file(path: Path, shown: str) -> Any:
    """The module that `path` defines, imported under a private name; any failure is one line."""
    name = f"_tunegen_reward_{abs(hash(os.path.abspath(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardError(f"reward file {shown!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module: any error while importing it is theirs
        raise RewardError(
            f"reward file {shown!r} failed to import: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    finally:
        sys.path.remove(folder)
    return module


def check_reward_signature(function: Callable[..., Any]) -> str | None:
    """Why `function` cannot be called as `function(prompts, completions, **fields)`, or None.

    It needs two positional parameters (prompts, completions) and `**kwargs` for the records'
    other fields; a further named parameter (`answer`) receives the field of that name.
    """
    expected = "expected a function f(prompts, completions, **fields) -> list[float]"
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None  # a builtin or C callable: trust it, the call will tell
    params = list(signature.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    has_var_positional = any(p.kind == p.VAR_POSITIONAL for p in positional)
    if len(positional) < 2 and not has_var_positional:
        return f"{expected}, got {function.__name__}{signature} (too few positional parameters)"
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        return f"{expected}, got {function.__name__}{signature} (no **fields)"
    positional_only = [p.name for p in params[2:] if p.kind == p.POSITIONAL_ONLY]
    if positional_only:
        return (
            f"{expected}, got {function.__name__}{signature} "
            f"(parameter {positional_only[0]!r} is positional-only; fields arrive by name)"
        )
    return None


class RewardFunctions:
    """The reward functions of a run and their weights; calling it scores a batch.

    `functions` maps each function's name (as metrics show it) to its `{path, function,
    weight}` in the config. Every function is loaded and checked when this is built, so a bad
    one stops the run before any weights load.
    """

    def __init__(self, functions: Mapping[str, Mapping[str, Any]]) -> None:
        if not functions:
            raise RewardError("rewards.functions: at least one reward function is needed")
        self.functions = [
            RewardFunction(
                name=name,
                source=f"{Path(item['path']).name}:{item['function']}",
                function=load_reward_function(item["path"], item["function"]),
                weight=float(item.get("weight", 1.0)),
            )
            for name, item in functions.items()
        ]

    def __len__(self) -> int:
        return len(self.functions)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[str],
        fields: Mapping[str, Sequence[Any]],
        *,
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total reward of each completion, shape (N,), and per-function metrics
        (`rewards/<name>/mean`, `rewards/<name>/std`).

        `step` is the optimizer step being taken, for the error a bad score raises.
        """
        columns = []
        metrics: dict[str, float] = {}
        for reward in self.functions:
            scores = self._scores(reward, prompts, completions, fields, step=step)
            columns.append(scores)
            metrics[f"rewards/{reward.name}/mean"] = scores.mean().item()
            metrics[f"rewards/{reward.name}/std"] = _std(scores)
        weights = torch.tensor([r.weight for r in self.functions], dtype=torch.float64)
        total = (torch.stack(columns, dim=1) * weights).sum(dim=1)  # (N,)
        return total.float(), metrics

    @staticmethod
    def _scores(
        reward: RewardFunction,
        prompts: Sequence[Any],
        completions: Sequence[str],
        fields: Mapping[str, Sequence[Any]],
        *,
        step: int,
    ) -> torch.Tensor:
        """One function's scores as a float64 tensor, every value checked."""
        where = f"step {step}: reward {reward.source}"
        try:
            scores = reward.function(list(prompts), list(completions), **fields)
        except Exception as exc:  # the user's function: report its error in one line
            raise RewardError(f"{where} raised {type(exc).__name__}: {one_line(exc)}") from exc
        if isinstance(scores, torch.Tensor):
            scores = scores.tolist()
        if not isinstance(scores, Sequence) or isinstance(scores, (str, bytes)):
            raise RewardError(
                f"{where} returned {type(scores).__name__}, expected a list of numbers"
            )
        if len(scores) != len(completions):
            raise RewardError(
                f"{where} returned {len(scores)} scores for {len(completions)} completions"
            )
        for index, score in enumerate(scores):
            if isinstance(score, bool) or not isinstance(score, numbers.Real):
                raise RewardError(
                    f"{where} returned {score!r} for completion {index}, expected a number"
                )
            if not math.isfinite(score):
                raise RewardError(
                    f"{where} returned {score} for completion {index} ({completions[index]!r})"
                )
        return torch.tensor([float(s) for s in scores], dtype=torch.float64)


def _std(values: torch.Tensor) -> float:
    """The population standard deviation (0 for a single value)."""
    return values.std(unbiased=False).item() if values.numel() > 1 else 0.0
