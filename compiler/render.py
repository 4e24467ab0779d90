"""Stage 4: render the plan into recipe source and config text with Jinja.

Templates see only the plan. Values reach the output through three filters and nothing else:
`py` (a Python literal built by `repr`, for the recipe), `yaml` (a YAML scalar or flow list, for the
config) and `comment` (text for a comment line, refused if it could end the comment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import jinja2
import yaml
from omegaconf import OmegaConf

from tunegen.compiler.plan import Plan

__all__ = ["Rendered", "render"]

_PLAIN_TEXT = re.compile(r"[\w ./:@+=,()'-]*")


@dataclass(frozen=True)
class Rendered:
    """The generated recipe source and config text, not yet checked or written."""

    recipe: str
    config: str


def render(plan: Plan) -> Rendered:
    """Render the recipe and config templates for `plan`."""
    env = _environment()
    recipe = env.get_template("recipe.py.j2").render(plan=plan)
    config = env.get_template("config.yaml.j2").render(plan=plan)
    return Rendered(recipe=recipe, config=config)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files("tunegen.templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(py=python_literal, yaml=yaml_value, comment=comment_text)
    return env


def python_literal(value: Any) -> str:
    """`value` as Python source: only plain literals are accepted, always written with repr()."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as a Python literal")


def yaml_value(value: Any) -> str:
    """`value` as a one-line YAML value (a scalar or a flow-style list)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"cannot render {type(value).__name__} as a YAML value")
    # Double quotes escape everything YAML could otherwise read differently (line separators
    # such as U+0085, control characters); plain text stays unquoted and readable.
    style = (
        '"' if isinstance(value, str) and not (value.isascii() and value.isprintable()) else None
    )
    text = _dump(value, style)
    # OmegaConf reads some plain text PyYAML writes unquoted (`0E0`) as a number: quote it.
    if isinstance(value, str) and style is None and _omegaconf_reads(text) != value:
        text = _dump(value, "'")
    return text


def _dump(value: Any, style: str | None) -> str:
    text = yaml.safe_dump(
        value, default_flow_style=True, default_style=style, width=float("inf"), allow_unicode=True
    )
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _omegaconf_reads(text: str) -> Any:
    """The value OmegaConf reads from the plain YAML value `text` (it reads `0E0` as a number)."""
    try:
        return OmegaConf.create(f"v: {text}")._get_node("v")._value()
    except Exception:  # noqa: BLE001 -- anything OmegaConf cannot read back is quoted instead
        return None


def comment_text(value: Any) -> str:
    """Text safe inside a `#` comment: plain characters as is, anything else as a quoted repr."""
    text = str(value)
    return text if _PLAIN_TEXT.fullmatch(text) else repr(text)
