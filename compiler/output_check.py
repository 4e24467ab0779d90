"""Stage 5: check rendered output before anything touches the disk.

The recipe must parse as Python (libcst, the same parser the merge of a regenerated recipe uses) and
the config must load as YAML. A failure here is a bug in tunegen, never in the user's spec, so it is
reported as such, with the offending line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst
import yaml

if TYPE_CHECKING:  # render imports the post-render pass, which raises GeneratedCodeError
    from tunegen.compiler.render import Rendered

__all__ = ["GeneratedCodeError", "check"]


class GeneratedCodeError(RuntimeError):
    """tunegen rendered output that does not parse: a bug to report, not a user error."""


def check(rendered: Rendered) -> libcst.Module:
    """Parse the rendered recipe and config; return the recipe's syntax tree."""
    try:
        module = libcst.parse_module(rendered.recipe)
    except libcst.ParserSyntaxError as exc:
        line = rendered.recipe.splitlines()[exc.raw_line - 1] if exc.raw_line else ""
        raise GeneratedCodeError(
            f"generated recipe does not parse at line {exc.raw_line}: {line!r}"
        ) from exc
    try:
        yaml.safe_load(rendered.config)
    except yaml.YAMLError as exc:
        raise GeneratedCodeError(f"generated config is not valid YAML: {exc}") from exc
    return module
