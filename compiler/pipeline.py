"""The compiler, top to bottom: parse -> validate -> plan -> render -> check -> write.

Every stage but the last is a pure function of its inputs, so `compile_spec` can be called to
inspect what would be generated (tests, `tunegen validate`) without writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunegen.compiler.output_check import check
from tunegen.compiler.parse import parse_spec
from tunegen.compiler.plan import Plan, make_plan
from tunegen.compiler.provenance import (
    Provenance,
    clear_pending,
    metadata_dir,
    record_provenance,
    write_provenance,
)
from tunegen.compiler.render import Rendered, render
from tunegen.compiler.schema import Spec
from tunegen.compiler.spec_check import validate_spec
from tunegen.compiler.write import write_outputs

__all__ = ["Compiled", "compile_spec", "provenance_of", "write_compiled"]


@dataclass(frozen=True)
class Compiled:
    """A compiled spec: the typed spec, the plan, and the checked output with its target paths."""

    spec: Spec
    plan: Plan
    rendered: Rendered
    recipe_path: Path
    config_path: Path
    spec_path: Path | None = None  # the spec file and its text, recorded for `tunegen update`
    spec_text: str = ""


def compile_spec(spec_path: str | Path, output_dir: str | Path = "generated") -> Compiled:
    """Compile the spec at `spec_path` for writing into `output_dir`; raises SpecError if invalid."""
    parsed = parse_spec(spec_path)
    spec = validate_spec(parsed)
    output_dir = Path(output_dir)
    recipe_path = output_dir / f"{spec.name}.py"
    config_path = output_dir / f"{spec.name}.yaml"
    plan = make_plan(spec, parsed, recipe_path=recipe_path, config_path=config_path)
    rendered = render(plan)
    check(rendered)
    return Compiled(spec, plan, rendered, recipe_path, config_path, Path(spec_path), parsed.text)


def write_compiled(compiled: Compiled, *, force: bool = False) -> list[Path]:
    """Write the recipe and config, then record them as pristine for `tunegen update`
    (`generated/.tunegen/<name>/`); existing files are replaced only with `force`."""
    outputs = {
        compiled.recipe_path: compiled.rendered.recipe,
        compiled.config_path: compiled.rendered.config,
    }
    written = write_outputs(outputs, force=force)
    if compiled.spec_path is not None:
        folder = metadata_dir(compiled.recipe_path)
        write_provenance(folder, provenance_of(compiled))
        clear_pending(folder)
    return written


def provenance_of(compiled: Compiled) -> Provenance:
    """What `tunegen update` needs to know about this generation (run in the current directory)."""
    assert compiled.spec_path is not None
    return record_provenance(
        spec_path=compiled.spec_path,
        spec_text=compiled.spec_text,
        version=compiled.plan.version,
        recipe_path=compiled.recipe_path,
        config_path=compiled.config_path,
        recipe=compiled.rendered.recipe,
        config=compiled.rendered.config,
    )
