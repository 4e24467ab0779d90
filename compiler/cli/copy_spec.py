"""`tunegen cp`: copy a built-in spec for editing.

A built-in spec names its data relative to its own folder inside the installed package. The copy
lives elsewhere, so those paths are rewritten to absolute ones; comments and layout are kept. The
copy starts with a `# yaml-language-server: $schema=...` line naming the spec's JSON Schema shipped
with tunegen, so editors with the YAML language server complete and check keys as the user types.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from tunegen.compiler.parse import parse_spec
from tunegen.compiler.render import yaml_value
from tunegen.compiler.schema import SCHEMA_FILE
from tunegen.compiler.spec_check import resolve_spec_path
from tunegen.compiler.write import write_outputs

__all__ = ["PATH_KEYS", "copy_spec", "schema_line", "schema_path"]

PATH_KEYS = ("data.path", "data.val_path", "eval.path", "tokenizer", "kd.teacher")


def copy_spec(source: Path, dest: Path, *, force: bool = False) -> Path:
    """Copy spec `source` to `dest`, making its relative file paths absolute (reward files too)."""
    parsed = parse_spec(source)
    lines = parsed.text.splitlines(keepends=True)
    model = parsed.values.get("model")
    model_is_path = isinstance(model, str) and "/" in model  # not a built-in name
    for key_path in (*PATH_KEYS, "model") if model_is_path else PATH_KEYS:
        value = _lookup(parsed.values, key_path)
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        index = parsed.lines[key_path] - 1
        absolute = resolve_spec_path(parsed, value).resolve().as_posix()
        key = key_path.rpartition(".")[2]
        head, sep, tail = lines[index].partition(f"{key}:")
        lines[index] = head + sep + tail.replace(value, yaml_value(absolute), 1)
    for key_path, reference in _reward_references(parsed.values):
        path, _, function = reference.rpartition(":")
        if not path or Path(path).is_absolute():
            continue
        index = parsed.lines[key_path] - 1
        absolute = f"{resolve_spec_path(parsed, path).resolve().as_posix()}:{function}"
        lines[index] = lines[index].replace(reference, yaml_value(absolute), 1)
    write_outputs({dest: schema_line() + "".join(lines)}, force=force)
    return dest


def _reward_references(values: dict) -> list[tuple[str, str]]:
    """(key path, `FILE.py:FUNCTION`) of each entry of a GRPO spec's `reward:` list."""
    found = []
    for i, entry in enumerate(values.get("reward") or []):
        if isinstance(entry, str):
            found.append((f"reward[{i}]", entry))
        elif isinstance(entry, dict) and isinstance(entry.get("function"), str):
            found.append((f"reward[{i}].function", entry["function"]))
    return found


def schema_path() -> Path:
    """The spec's JSON Schema file shipped inside the installed tunegen package."""
    return Path(str(files("tunegen.compiler") / SCHEMA_FILE)).resolve()


def schema_line() -> str:
    """The modeline that points yaml-language-server (VS Code, Neovim, ...) at the schema."""
    return f"# yaml-language-server: $schema={schema_path().as_uri()}\n"


def _lookup(values: dict, key_path: str) -> object:
    node: object = values
    for part in key_path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
