"""The `tunegen` command line.

    tunegen new --spec lora.yaml        compile a spec into generated/<name>.py and .yaml
    tunegen validate FILE [key=value]   check a spec or a generated config without loading weights
    tunegen run RECIPE [--config F] [key=value ...]
    tunegen data FILE [--show N] [--packed] [--json] [--export F]   the data as the model sees it
    tunegen ls                          built-in specs, methods and models
    tunegen cp NAME DEST                copy a built-in spec to edit

Every user error is one line on stderr and exit status 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import runpy
import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer
import yaml

from tunegen.compiler.plan import tunegen_version
from tunegen.runtime.errors import TunegenError

__all__ = ["app", "builtin_specs", "main"]

EXIT_USER_ERROR = 2

app = typer.Typer(
    help="Compile a short fine-tuning spec into a readable PyTorch recipe and config you own.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunegen {tunegen_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    _state["debug"] = debug


def builtin_specs() -> dict[str, Path]:
    """The specs shipped with tunegen, by name (the file stem)."""
    folder = files("tunegen.specs")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def _spec_path(spec: str) -> Path:
    """A spec file, or the name of a built-in spec."""
    path = Path(spec)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in spec:
        return path
    builtin = builtin_specs()
    if spec in builtin:
        return builtin[spec]
    raise TunegenError(
        f"{spec}: no such spec file or built-in spec (built-in: {', '.join(sorted(builtin))})"
    )


@app.command()
def new(
    spec: Annotated[str, typer.Option("--spec", "-s", help="Spec file, or a built-in spec name.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where to write.")] = Path(
        "generated"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing generated files.")
    ] = False,
) -> None:
    """Validate a spec and write generated/<name>.py and generated/<name>.yaml."""
    from tunegen.compiler.pipeline import compile_spec, write_compiled

    compiled = compile_spec(_spec_path(spec), output_dir)
    for path in write_compiled(compiled, force=force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: tunegen run {compiled.recipe_path}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def validate(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A spec, or a generated config.")],
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="Recipe that reads the config (default: same name .py)."),
    ] = None,
) -> None:
    """Check a spec or a config without loading weights; list every problem, one per line.

    Extra `key=value` / `~key` arguments are applied to a config first, as `tunegen run` would.
    """
    from tunegen.compiler.preflight import check_config_file, check_spec_file

    if _is_spec(path):
        if ctx.args:
            raise TunegenError("overrides apply to generated configs, not to specs")
        summary = check_spec_file(path)
    else:
        summary = check_config_file(path, ctx.args, recipe=recipe)
    typer.echo(summary)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="A generated (or hand-written) recipe .py file.")],
    configs: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", help="Config file (default: the recipe's .yaml)."),
    ] = None,
) -> None:
    """Run a recipe with its config and `key=value` / `~key` overrides."""
    if not recipe.is_file():
        raise TunegenError(f"{recipe}: recipe file not found")
    if configs and len(configs) > 1:  # click would silently take the last one
        raise TunegenError(f"--config is given {len(configs)} times; pass one config file")
    config = configs[0] if configs else recipe.with_suffix(".yaml")
    if not config.is_file():
        raise TunegenError(f"{config}: config file not found (pass --config)")
    argv = ["--config", str(config), *ctx.args]
    if _state["debug"]:
        argv.append("--debug")
    sys.argv = [str(recipe), *argv]
    sys.path.insert(0, str(recipe.resolve().parent))
    runpy.run_path(str(recipe), run_name="__main__")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A spec, or a generated config.")],
    show: Annotated[
        int | None,
        typer.Option(
            "--show", min=0, help="Samples to print token by token (default 3; 1 with --packed)."
        ),
    ] = None,
    packed: Annotated[
        bool, typer.Option("--packed", help="Show packed sequences with document boundaries.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the statistics, as one JSON object.")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Write every sample's input_ids and labels to this .jsonl."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --export file.")] = False,
) -> None:
    """Show the training data as the recipe will see it: samples, statistics, export.

    Extra `key=value` / `~key` arguments override the config, as in `tunegen run`.
    """
    from tunegen.compiler import data as data_cmd

    if not path.is_file():
        raise TunegenError(f"{path}: file not found")
    cfg = data_cmd.load_data_config(path, ctx.args, is_spec=_is_spec(path))
    view = data_cmd.build_data_view(cfg)
    stats = data_cmd.stats_of(view)
    if export is not None:
        count = data_cmd.export_jsonl(view.dataset, export, force=force)
        typer.echo(f"wrote {count:,} samples to {export}", err=as_json)
    if as_json:
        typer.echo(json.dumps(stats.to_dict()))
        return
    style = data_cmd.Style(color=data_cmd.use_color())
    count = (1 if packed else 3) if show is None else show
    if count:
        typer.echo(style.legend)
    if packed:
        rendered = data_cmd.render_packs(view, count, style)
    else:
        rendered = [
            data_cmd.render_sample(view, i, style) for i in range(min(count, len(view.dataset)))
        ]
    for text in rendered:
        typer.echo(text)
    typer.echo(data_cmd.format_stats(stats, source=view.source))


@app.command("ls")
def list_builtins() -> None:
    """List the built-in specs, methods and models."""
    from tunegen.compiler.schema import METHODS
    from tunegen.runtime.models import BUILTIN_MODELS

    typer.echo("specs (tunegen cp NAME my_spec.yaml, or tunegen new --spec NAME):")
    for name, path in sorted(builtin_specs().items()):
        typer.echo(f"  {name:<12} {_spec_summary(path)}")
    typer.echo(f"methods: {', '.join(METHODS)}")
    typer.echo(f"models:  {', '.join(sorted(BUILTIN_MODELS))}")


@app.command("cp")
def copy_builtin(
    name: Annotated[str, typer.Argument(help="Built-in spec name (see tunegen ls).")],
    dest: Annotated[Path, typer.Argument(help="File to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite DEST if it exists.")] = False,
) -> None:
    """Copy a built-in spec to DEST to edit; its data paths are made absolute so they still resolve."""
    from tunegen.compiler.copy import copy_spec

    builtin = builtin_specs()
    if name not in builtin:
        raise TunegenError(
            f"{name}: no built-in spec of that name (built-in: {', '.join(sorted(builtin))})"
        )
    copy_spec(builtin[name], dest, force=force)
    typer.echo(f"wrote {dest}")


def _is_spec(path: Path) -> bool:
    """A spec has top-level `method`; a generated config has component sections instead."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunegenError(f"{path}: file not found") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return path.suffix in (".yaml", ".yml") and "method:" in path.read_text(errors="replace")
    return isinstance(data, dict) and "method" in data


def _spec_summary(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2.

    Usage errors (unknown command, missing option) are click's, which also exit with status 2.
    """
    try:
        app()
    except TunegenError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)


@app.command()
def update(
    recipe: Annotated[
        Path, typer.Argument(help="The generated recipe, e.g. generated/my_recipe.py.")
    ],
    spec: Annotated[
        str | None, typer.Option("--spec", "-s", help="Regenerate from this spec instead.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change as a diff; write nothing.")
    ] = False,
    resolved: Annotated[
        bool, typer.Option("--resolved", help="The conflicts of the last update are resolved.")
    ] = False,
) -> None:
    """Bring a changed spec or a newer tunegen into your edited recipe and config, keeping your edits.

    Exit status 1 when conflicts are left in the files (marked as git marks them).
    """
    from tunegen.compiler import update as updating

    if resolved:
        _finish(updating.resolve(recipe))
    _finish(updating.update(recipe, spec=_spec_path(spec) if spec else None, dry_run=dry_run))


@app.command()
def diff(
    recipe: Annotated[
        Path, typer.Argument(help="The generated recipe, e.g. generated/my_recipe.py.")
    ],
) -> None:
    """Print your edits to the recipe and config against what tunegen generated."""
    from tunegen.compiler.update import user_diff

    _finish(user_diff(recipe))


def _finish(outcome) -> None:
    """Print an update.Outcome and exit with its status."""
    for line in outcome.out:
        typer.echo(line)
    for line in outcome.err:
        typer.echo(line, err=True)
    raise typer.Exit(outcome.status)
