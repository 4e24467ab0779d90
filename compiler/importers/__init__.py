"""`tunegen import`: another tool's training config in, a tunegen spec out.

A source config is read as plain YAML (no interpolation, no imports of the other tool), its style
is recognised (`detect`: torchtune recipe configs name `_component_`s, axolotl configs have a
`base_model` and flat keys), and the style's module (`torchtune.py`, `axolotl.py`, each a set of
mapping tables) fills a `SpecBuilder`. The builder records, for every spec value, the source keys
behind it, and, for every source key that maps nowhere, why: nothing is dropped silently. Source
keys that no table names are reported as having no tunegen setting.

`spec_text` writes the spec in the schema's key order, headed by a comment naming the source file
and the source keys behind each value that differs from tunegen's default.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunegen.compiler.schema import Spec, field_at, spec_errors, strip_optional
from tunegen.runtime.errors import TunegenError

__all__ = [
    "SOURCES",
    "Imported",
    "SpecBuilder",
    "detect",
    "import_config",
    "number",
    "read_source",
    "schema_has",
    "spec_name",
    "spec_text",
]

Source = Literal["torchtune", "axolotl"]
SOURCES: tuple[Source, ...] = ("torchtune", "axolotl")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_NEITHER = (
    "tunegen import reads a torchtune recipe config (sections with _component_) or an axolotl "
    "config (base_model and flat keys such as datasets, adapter, learning_rate)"
)


class ImportError_(TunegenError):
    """A source config that cannot be imported: one line naming what is unsupported."""


@dataclass
class Imported:
    """A source config turned into spec values, with where each came from and what was left."""

    source: Source
    path: Path
    values: dict[str, Any]
    origins: dict[str, tuple[str, ...]]
    """Spec key path -> the source key paths behind its value."""
    not_imported: list[tuple[str, str]]
    """(source key path, reason), in the source's key order."""
    notes: list[tuple[str, str]]
    """(source key path, what changed on the way in)."""


def number(value: Any) -> Any:
    """A number written as text (PyYAML reads `3e-4` as a string) as the float it spells."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return value


def schema_has(spec_key: str) -> bool:
    """Whether this tunegen's spec has the key `spec_key` (some keys arrive in later versions)."""
    _, found = field_at(tuple(spec_key.split(".")))
    return found is not None


@dataclass
class SpecBuilder:
    """Spec values under construction, with the accounting of every source key.

    `set` records a spec value and its source keys, `use` marks source keys that decided something
    without a value of their own (a `_component_` that names the method), `skip` reports a source
    key with the reason it maps nowhere. A key is accounted for when it or a parent is.
    """

    raw: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key_path: str, default: Any = None) -> Any:
        """The source value at `a.b.c` (default when a part is missing)."""
        node: Any = self.raw
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", key_path):
            if part.startswith("["):
                index = int(part[1:-1])
                if not isinstance(node, list) or index >= len(node):
                    return default
                node = node[index]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return default
        return node

    def has(self, key_path: str) -> bool:
        """Whether the source has the key `a.b.c`."""
        marker = object()
        return self.get(key_path, marker) is not marker

    def set(self, spec_key: str, value: Any, *sources: str) -> None:
        """Spec key `spec_key` holds `value`, which comes from the source keys `sources`."""
        node = self.values
        *parents, last = spec_key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.origins[spec_key] = tuple(s for s in sources if s)
        self.used.update(s for s in sources if self.has(s))

    def set_if_known(self, spec_key: str, value: Any, source: str) -> None:
        """`set`, where this tunegen has `spec_key`; otherwise `source` is reported."""
        if schema_has(spec_key):
            self.set(spec_key, value, source)
        else:
            self.skip(source, f"this tunegen has no {spec_key}")

    def use(self, *sources: str) -> None:
        """The source keys `sources` are accounted for (they decided something)."""
        self.used.update(sources)

    def skip(self, source: str, reason: str) -> None:
        """The source key `source` is not imported, for `reason`."""
        if self.has(source):
            self.reasons.setdefault(source, reason)

    def note(self, source: str, text: str) -> None:
        """The source key `source` was imported with a change the user should know of."""
        self.notes.append((source, text))

    def value(self, spec_key: str, default: Any = None) -> Any:
        """The spec value set so far at `spec_key`."""
        node: Any = self.values
        for part in spec_key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def unset(self, spec_key: str) -> None:
        """Drop a spec value set earlier (a later rule found it does not apply)."""
        *parents, last = spec_key.split(".")
        node = self.values
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
        self.origins.pop(spec_key, None)

    def not_imported(self, default_reason: str) -> list[tuple[str, str]]:
        """Every source key neither used nor mapped, with its reason, in the source's order;
        keys no rule named get `default_reason`."""
        found: list[tuple[str, str]] = []
        seen: set[str] = set()
        for leaf in _leaves(self.raw):
            owners = [p for p in _prefixes(leaf) if p in self.reasons or p in self.used]
            owner = owners[-1] if owners else None  # the innermost rule decides
            if owner in self.used:
                continue
            key, reason = (owner, self.reasons[owner]) if owner else (leaf, default_reason)
            if key not in seen:
                seen.add(key)
                found.append((key, reason))
        return found


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    """The key paths of the values in a YAML document (`a.b`, `datasets[0].path`)."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and node and any(isinstance(v, (dict, list)) for v in node):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix


def _prefixes(key_path: str) -> list[str]:
    """`a.b[0].c` -> `a`, `a.b`, `a.b[0]`, `a.b[0].c` (outermost first)."""
    cuts = [m.start() for m in re.finditer(r"[.\[]", key_path)]
    return [key_path[:cut] for cut in cuts] + [key_path]


def read_source(path: Path) -> dict[str, Any]:
    """The source config at `path` as a mapping; one-line errors for a missing or bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportError_(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImportError_(f"{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportError_(f"{path}: cannot read ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ImportError_(f"{where}: not valid YAML ({problem}); {_NEITHER}") from None
    if not isinstance(data, dict) or not data:
        what = "empty" if data is None or data == {} else f"a {type(data).__name__}"
        raise ImportError_(f"{path}: the file is {what}, not a mapping of keys; {_NEITHER}")
    return data


def detect(raw: dict[str, Any], path: Path) -> Source:
    """The style of the config `raw` (from `path`, for the error): torchtune or axolotl."""
    components = [
        str(v.get("_component_"))
        for v in raw.values()
        if isinstance(v, dict) and "_component_" in v
    ]
    if any(c.startswith("tunegen.") for c in components):
        raise ImportError_(
            f"{path}: this is a config tunegen generated; run it (tunegen run) or edit its spec"
        )
    if components:
        return "torchtune"
    if "base_model" in raw:
        return "axolotl"
    if any(key in raw for key in ("name", "method", "model", "data")) and "method" in raw:
        raise ImportError_(f"{path}: this is already a tunegen spec; tunegen new --spec {path}")
    keys = ", ".join(str(k) for k in list(raw)[:5]) + (", ..." if len(raw) > 5 else "")
    raise ImportError_(f"{path}: neither style (keys {keys}); {_NEITHER}")


def import_config(path: Path, source: Source | None = None) -> Imported:
    """Read the config at `path` and map it to spec values (style detected unless `source`)."""
    from tunegen.compiler.importers import axolotl, torchtune

    raw = read_source(path)
    style = source or detect(raw, path)
    module = {"torchtune": torchtune, "axolotl": axolotl}[style]
    builder = SpecBuilder(raw)
    builder.set("name", spec_name(path), "")
    module.build(builder, path)
    _check(builder.values, path, style)
    return Imported(
        source=style,
        path=path,
        values=builder.values,
        origins=builder.origins,
        not_imported=builder.not_imported(module.NO_SUCH_SETTING),
        notes=builder.notes,
    )


def _check(values: dict[str, Any], path: Path, style: str) -> None:
    """The imported values must make a spec the schema accepts (a gap in the tables otherwise)."""
    _, errors = spec_errors(values)
    if errors:
        key, message = errors[0]
        raise ImportError_(f"{path}: the {style} config maps to an invalid spec: {key}: {message}")


def spec_name(path: Path, prefix: str | None = None) -> str:
    """A spec name (a Python identifier) from the source file's name: `1B_lora_single_device`
    -> `llama3_2_1B_lora_single_device` (prefix: the model family, else the file's folder)."""
    stem = re.sub(r"\W+", "_", path.stem).strip("_") or "imported"
    if stem[0].isdigit():
        parent = prefix or re.sub(r"\W+", "_", path.resolve().parent.name).strip("_")
        stem = f"{parent}_{stem}" if parent and not parent[0].isdigit() else f"imported_{stem}"
    return f"{stem}_" if keyword.iskeyword(stem) else stem


# --------------------------------------------------------------------------------------------------
# Writing the spec


def spec_text(imported: Imported) -> str:
    """The spec as YAML, keys in the schema's order, headed by where its values came from."""
    ordered = _ordered(imported.values, Spec)
    body = yaml.dump(ordered, Dumper=_SpecDumper, sort_keys=False, width=100)
    return _header(imported) + body


class _SpecDumper(yaml.SafeDumper):
    """Sections in block style, lists of plain values on one line (`targets: [q_proj, v_proj]`)."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_SpecDumper.add_representer(list, _represent_list)


def _ordered(values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """`values` in the order of `model`'s fields, sections recursively."""
    result = {}
    for name, info in model.model_fields.items():
        if name not in values:
            continue
        hint = strip_optional(info.annotation)
        is_section = isinstance(hint, type) and issubclass(hint, BaseModel)
        value = values[name]
        if is_section and isinstance(value, dict):
            if not value and not info.is_required():
                continue  # an empty optional section (dpo: with defaults only) reads as absent
            value = _ordered(value, hint)
        result[name] = value
    return result


def _header(imported: Imported) -> str:
    """The comment block naming the source and the source keys behind each non-default value."""
    lines = [
        f"# Imported by `tunegen import` from the {imported.source} config {imported.path}.",
        "# Source keys behind each value that differs from tunegen's default:",
    ]
    rows = [
        (f"{key}: {_inline(value)}", ", ".join(imported.origins.get(key, ())) or "(derived)")
        for key, value in _flat(imported.values)
        if key != "name" and not _is_default(key, value)
    ]
    width = max((len(left) for left, _ in rows), default=0)
    lines += [f"#   {left:<{width}}  <- {right}" for left, right in rows]
    if imported.not_imported:
        lines.append(
            f"# {len(imported.not_imported)} source keys were not imported "
            "(tunegen import listed each with its reason on stderr)."
        )
    return "\n".join(lines) + "\n"


def _flat(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in _ordered_items(values, prefix):
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flat(value, path)
        else:
            yield path, value


def _ordered_items(values: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    model: Any = Spec
    if prefix:
        _, info = field_at(tuple(prefix.split(".")))
        model = strip_optional(info.annotation) if info is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return list(values.items())
    order = list(model.model_fields)
    return sorted(values.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)


def _is_default(spec_key: str, value: Any) -> bool:
    """Whether `value` is the schema's default for `spec_key` (required keys never are)."""
    _, info = field_at(tuple(spec_key.split(".")))
    if info is None or info.default is PydanticUndefined:
        return False
    return info.default == value


def _inline(value: Any) -> str:
    """A value as it reads in the header: YAML flow style, cut at 40 characters."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= 32 else text[:29] + "..."
