"""Stage 1: read a spec file into plain Python values, remembering the line of every key.

Line numbers let every later error say `spec.yaml:12: training.lr: ...`. PyYAML's composer gives us
the node tree with positions; values are built from the same nodes with the safe constructor, so
what we validate is exactly what `yaml.safe_load` would return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunegen.runtime.errors import Problem, SpecError

__all__ = ["ParsedSpec", "Problem", "parse_spec", "parse_spec_text"]


@dataclass(frozen=True)
class ParsedSpec:
    """A spec's raw values, its source text, and the line each key path starts on."""

    path: Path
    text: str
    values: dict[str, Any]
    lines: dict[str, int]

    def line_of(self, key_path: str) -> int:
        """The line of `key_path`, or of its nearest parent that has one (1 for the top level)."""
        while key_path:
            if key_path in self.lines:
                return self.lines[key_path]
            key_path = key_path.rpartition(".")[0]
        return 1


def parse_spec(path: str | Path) -> ParsedSpec:
    """Read and parse the spec at `path`; raise SpecError for a missing file or broken YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec ({exc})") from None
    return parse_spec_text(text, path)


def parse_spec_text(text: str, path: str | Path) -> ParsedSpec:
    """Parse spec YAML `text` (named `path` in errors) into values and key lines."""
    path = Path(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(str(Problem("", f"invalid YAML: {problem}", str(path), line))) from None
    if root is None:
        raise SpecError(f"{path}: the spec is empty")
    if not isinstance(root, yaml.MappingNode):
        raise SpecError(
            str(Problem("", "a spec is a mapping of keys", str(path), root.start_mark.line + 1))
        )
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    values = _build(root, "", lines, problems, path)
    if problems:
        raise SpecError("\n".join(map(str, problems)))
    return ParsedSpec(path=path, text=text, values=values, lines=lines)


def _build(
    node: yaml.Node, key_path: str, lines: dict[str, int], problems: list[Problem], path: Path
) -> Any:
    """Turn a YAML node into Python values, recording the line of every mapping key."""
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            child = f"{key_path}.{key}" if key_path else str(key)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                problems.append(Problem(key_path, f"key {key!r} is not a string", str(path), line))
                continue
            if key in result:
                problems.append(Problem(child, "duplicate key", str(path), line))
                continue
            lines[child] = line
            result[key] = _build(value_node, child, lines, problems, path)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = f"{key_path}[{index}]"
            lines[child] = item.start_mark.line + 1
            items.append(_build(item, child, lines, problems, path))
        return items
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader(" ").construct_object(node, deep=True)
