"""`tunegen cp`: copy a built-in spec for editing.

A built-in spec names its data relative to its own folder inside the installed package. The copy
lives elsewhere, so those paths are rewritten to absolute ones; comments and layout are kept.
"""

from __future__ import annotations

from pathlib import Path

from tunegen.compiler.parse import parse_spec
from tunegen.compiler.render import yaml_value
from tunegen.compiler.validate import resolve_spec_path
from tunegen.compiler.write import write_outputs

__all__ = ["PATH_KEYS", "copy_spec"]

PATH_KEYS = ("data.path", "eval.path", "tokenizer", "kd.teacher")


def copy_spec(source: Path, dest: Path, *, force: bool = False) -> Path:
    """Copy spec `source` to `dest`, making its relative file paths absolute."""
    parsed = parse_spec(source)
    lines = parsed.text.splitlines(keepends=True)
    for key_path in PATH_KEYS:
        value = _lookup(parsed.values, key_path)
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        index = parsed.lines[key_path] - 1
        absolute = resolve_spec_path(parsed, value).resolve().as_posix()
        key = key_path.rpartition(".")[2]
        head, sep, tail = lines[index].partition(f"{key}:")
        lines[index] = head + sep + tail.replace(value, yaml_value(absolute), 1)
    write_outputs({dest: "".join(lines)}, force=force)
    return dest


def _lookup(values: dict, key_path: str) -> object:
    node: object = values
    for part in key_path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
