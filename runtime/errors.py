"""User-facing errors.

Every problem a user can fix (a bad spec, config, data file, checkpoint or tokenizer) is raised as a
`TunegenError`. Its message is one line that says what is wrong and where (file:line, or a key path).
The CLI and generated recipes print that line and exit with status 2; anything else is a bug and keeps
its traceback. `one_line` and `and_more` help keep messages to that one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Problem",
    "SpecError",
    "TokenizerError",
    "TunegenError",
    "and_more",
    "one_line",
    "out_of_bounds",
]


class TunegenError(Exception):
    """A problem in the user's input, reported as one line without a traceback."""


class SpecError(TunegenError):
    """The spec YAML is malformed or invalid."""


class ConfigError(TunegenError):
    """The generated config (or an override of it) is malformed or invalid."""


class DataError(TunegenError):
    """A data file is missing, unreadable, or has a bad record."""


class CheckpointError(TunegenError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


class TokenizerError(TunegenError):
    """A tokenizer file is missing or corrupt."""


@dataclass(frozen=True)
class Problem:
    """One problem in a spec or config, located by key path (``training.lr``, ``layers[0].dim``)
    and, for a spec, by file and line: ``spec.yaml:12: training.lr: must be greater than 0``.

    The one located-problem type of tunegen: the spec validator and the config pre-flight both
    report lists of these.
    """

    key_path: str
    message: str
    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else self.file
        text = f"{self.key_path}: {self.message}" if self.key_path else self.message
        return f"{where}: {text}" if where else text


_BOUND_WORDS = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}


def out_of_bounds(value: float, **bounds: float | None) -> str | None:
    """``"must be at least 1, got 0"`` if `value` breaks one of `bounds` (``ge``, ``gt``, ``le``,
    ``lt``), else None.

    The one wording of range errors: the spec validator, the config pre-flight (both through the
    spec schema) and runtime constructors that protect direct library callers all use it.
    """
    broken = {
        "ge": lambda bound: value >= bound,
        "gt": lambda bound: value > bound,
        "le": lambda bound: value <= bound,
        "lt": lambda bound: value < bound,
    }
    for name, bound in bounds.items():
        if bound is not None and not broken[name](bound):
            return f"must be {_BOUND_WORDS[name]} {bound:g}, got {value!r}"
    return None


def one_line(error: BaseException) -> str:
    """The first line of `error`'s message, or its type name when it has none.

    For quoting a library's exception (safetensors, json, torch.load) inside a one-line message.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def and_more(names: Sequence[str], kind: str) -> str:
    """The suffix `" (and 2 more missing)"` for a message that names only `names[0]`.

    A message names the first offender and counts the others; "" when there are none.
    """
    return f" (and {len(names) - 1} more {kind})" if len(names) > 1 else ""
