"""Stage 4: render the plan into recipe source and config text with Jinja.

Templates see only the plan. Values reach the output through three filters and nothing else:
`py` (a Python literal built by `repr`, for the recipe), `yaml` (a YAML scalar or flow list, for the
config) and `comment` (text for a comment line, refused if it could end the comment).

The recipe is assembled from parts (docs/architecture.md): the skeleton `recipe.py.j2` names hook
points with `{% hook "name" %}` and `{% slot "name" %}`; the objective's part
(`objectives/<objective>.py.j2`) and each enabled feature's part (`features/<feature>.py.j2`) define
one macro per hook they contribute to. Then the post-render pass (`tunegen.compiler.imports` and
`tunegen.compiler.formatting`) writes the import block from the names the code uses and formats the
file as `ruff format` does, so no template chooses an import or imitates a formatter.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import jinja2
import yaml
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from omegaconf import OmegaConf

from tunegen.compiler.formatting import format_python
from tunegen.compiler.imports import add_imports
from tunegen.compiler.plan import Plan

__all__ = ["HookExtension", "Rendered", "environment", "parts_of", "render"]

_PLAIN_TEXT = re.compile(r"[\w ./:@+=,()'-]*")
# A hook or slot tag alone on its line; its column is where the contributed code goes.
_HOOK_LINE = re.compile(r'^( *)\{% (hook|slot) ("[a-z_]+") %\}$', re.MULTILINE)


@dataclass(frozen=True)
class Rendered:
    """The generated recipe source and config text, not yet checked or written."""

    recipe: str
    config: str


def render(plan: Plan, *, overlay: Mapping[str, str] | None = None) -> Rendered:
    """Render the recipe and config templates for `plan`.

    `overlay` maps template names to template text that takes precedence over the shipped
    templates (tests add a toy feature this way).
    """
    env = environment(overlay)
    recipe = env.get_template("recipe.py.j2").render(plan=plan)
    config = env.get_template("config.yaml.j2").render(plan=plan)
    return Rendered(recipe=format_python(add_imports(recipe)), config=config)


def parts_of(plan: Plan) -> tuple[str, ...]:
    """The templates that contribute to the skeleton's hooks, in contribution order."""
    return (
        f"objectives/{plan.objective}.py.j2",
        *(f"features/{feature}.py.j2" for feature in plan.features),
    )


def environment(overlay: Mapping[str, str] | None = None) -> jinja2.Environment:
    """The Jinja environment: shipped templates (under `overlay`, if given) and the hook tags."""
    loader: jinja2.BaseLoader = jinja2.FileSystemLoader(str(files("tunegen.templates")))
    if overlay:
        loader = jinja2.ChoiceLoader([jinja2.DictLoader(dict(overlay)), loader])
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        extensions=[HookExtension],
    )
    env.filters.update(py=python_literal, yaml=yaml_value, comment=comment_text)
    return env


class HookExtension(Extension):
    """`{% hook "name" %}` and `{% slot "name" %}`: where the parts' code goes.

    A hook takes the code of every part that defines a macro of its name, in `parts_of` order
    (none is fine); a slot takes exactly one part's. Either tag stands alone on its line, and
    the contributed lines are indented to the tag's column, whatever indentation the macro used.
    """

    tags = frozenset({"hook", "slot"})

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        # The column is lost once lstrip_blocks removes it; pass it to the tag as an argument.
        return _HOOK_LINE.sub(lambda m: f"{m[1]}{{% {m[2]} {m[3]}, {len(m[1])} %}}", source)

    def parse(self, parser: Parser) -> nodes.Node:
        tag = next(parser.stream)
        name = parser.parse_expression()
        if not parser.stream.skip_if("comma"):
            parser.fail(f'a {{% {tag.value} "..." %}} tag must stand alone on its line', tag.lineno)
        column = parser.parse_expression()
        args = [nodes.ContextReference(), nodes.Const(tag.value), name, column]
        return nodes.Output([self.call_method("_contribute", args)]).set_lineno(tag.lineno)

    def _contribute(self, context: Any, kind: str, name: str, column: int) -> str:
        plan = context["plan"]
        code = []
        for part in parts_of(plan):
            module = self.environment.get_template(part).make_module({"plan": plan})
            macro = getattr(module, name, None)
            if macro is not None:
                code.append((part, textwrap.dedent(str(macro())).strip("\n")))
        if kind == "slot" and len(code) != 1:
            filled = ", ".join(part for part, _ in code) or "no part"
            raise jinja2.TemplateRuntimeError(f"slot {name!r} needs exactly one part, got {filled}")
        text = "\n".join(lines for _, lines in code if lines)
        return textwrap.indent(text, " " * column) + "\n" if text else ""


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
