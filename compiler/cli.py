"""The `tunegen` command line.

    tunegen new --spec lora.yaml        compile a spec into generated/<name>.py and .yaml
    tunegen validate FILE [key=value]   check a spec or a generated config without loading weights
    tunegen run RECIPE [--config F] [key=value ...]
    tunegen data FILE [--show N] [--packed] [--json] [--export F]   the data as the model sees it
    tunegen ls                          built-in specs, methods and models
    tunegen cp NAME DEST                copy a built-in spec to edit
    tunegen schema [--output F]         the spec's JSON Schema, for editors and tools

Every user error is one line on stderr and exit status 2 (usage errors too, naming the command
typed); `--debug`, before or after the command, shows the traceback.
"""

from __future__ import annotations

import json
import runpy
import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from tunegen.compiler.plan import tunegen_version
from tunegen.runtime.errors import TunegenError

__all__ = ["app", "builtin_specs", "main"]

EXIT_USER_ERROR = 2

app = typer.Typer(
    help="Compile a short fine-tuning spec into a readable PyTorch recipe and config you own.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: `--force`, `--config PATH`, as other command lines read
)
_state = {"debug": False}
PROG = "tunegen"

# Every command takes --debug, so it works before or after the command name.
Debug = Annotated[
    bool, typer.Option("--debug", help="Show the traceback of an error.", show_default=False)
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(metavar="KEY=VALUE", show_default=False, hidden=True),  # in the epilog
]
OVERRIDES_HELP = """\b
Overrides, after the file, change the config as loaded:
  key.sub=value     set a key (the value is YAML)   training.lr=1e-4
  +key.sub=value    add a key that is not there     +loss.scale=0.5
  ~key.sub          delete a key                    ~training.clip_grad_norm
A key that does not exist is an error with a did-you-mean, never a new key."""
RUN_EPILOG = f"""{OVERRIDES_HELP}

\b
Example:
  tunegen run generated/lora.py training.max_steps=50 training.lr=1e-3"""


def _debug(debug: bool) -> None:
    if debug:
        _state["debug"] = True


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunegen {tunegen_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Debug = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    _debug(debug)


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
    spec: Annotated[
        str,
        typer.Option("--spec", "-s", metavar="FILE", help="Spec file, or a built-in spec name."),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", metavar="DIR", help="Where to write.")
    ] = Path("generated"),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing generated files.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Validate a spec and write generated/<name>.py and generated/<name>.yaml."""
    from tunegen.compiler.pipeline import compile_spec, write_compiled

    _debug(debug)

    compiled = compile_spec(_spec_path(spec), output_dir)
    for path in write_compiled(compiled, force=force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: tunegen run {compiled.recipe_path}")


@app.command(
    context_settings={"ignore_unknown_options": True},
    epilog=OVERRIDES_HELP,
)
def validate(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A spec, or a generated config.")],
    overrides: Overrides = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            metavar="PATH",
            help="Recipe that reads the config (default: the .py of the same name).",
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Check a spec or a config, and its data, without loading weights; list every problem.

    Overrides are applied to the config first (a spec's: the one it compiles to), as `tunegen
    run` would apply them.
    """
    from tunegen.compiler.preflight import check_config_file, check_spec_file

    _debug(debug)
    overrides = _overrides("validate", overrides)
    if _is_spec(path):
        summary = check_spec_file(path, overrides)
    else:
        summary = check_config_file(path, overrides, recipe=recipe)
    typer.echo(summary)


@app.command(
    context_settings={"ignore_unknown_options": True},
    epilog=RUN_EPILOG,
)
def run(
    recipe: Annotated[
        Path,
        typer.Argument(metavar="RECIPE", help="A generated (or hand-written) recipe .py file."),
    ],
    overrides: Overrides = None,
    configs: Annotated[
        list[Path] | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            show_default=False,
            help="Config file (default: the recipe's .yaml).",
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Run a recipe with its config and command-line overrides."""
    _debug(debug)
    overrides = _overrides("run", overrides)
    if not recipe.is_file():
        raise TunegenError(f"{recipe}: recipe file not found")
    if configs and len(configs) > 1:  # click would silently take the last one
        raise TunegenError(f"--config is given {len(configs)} times; pass one config file")
    config = configs[0] if configs else recipe.with_suffix(".yaml")
    if not config.is_file():
        raise TunegenError(f"{config}: config file not found (pass --config)")
    argv = ["--config", str(config), *overrides]
    if _state["debug"]:
        argv.append("--debug")
    sys.argv = [str(recipe), *argv]
    sys.path.insert(0, str(recipe.resolve().parent))
    runpy.run_path(str(recipe), run_name="__main__")


@app.command(context_settings={"ignore_unknown_options": True}, epilog=OVERRIDES_HELP)
def data(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A spec, or a generated config.")],
    overrides: Overrides = None,
    show: Annotated[
        int | None,
        typer.Option(
            "--show",
            min=0,
            metavar="N",
            help="Samples to print token by token (default 3; 1 with --packed).",
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
        typer.Option(
            "--export",
            metavar="FILE",
            help="Write every sample's input_ids and labels to this .jsonl.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --export file.")] = False,
    debug: Debug = False,
) -> None:
    """Show the training data as the recipe will see it: samples, statistics, export.

    Overrides change the config first, as in `tunegen run`.
    """
    from tunegen.compiler import data as data_cmd

    _debug(debug)
    overrides = _overrides("data", overrides)
    if not path.is_file():
        raise TunegenError(f"{path}: file not found")
    cfg = data_cmd.load_data_config(path, overrides, is_spec=_is_spec(path))
    view = data_cmd.build_data_view(cfg)
    stats = data_cmd.stats_of(view)
    if export is not None:
        count = data_cmd.export_jsonl(view.dataset, export, force=force)
        samples = "sample" if count == 1 else "samples"
        typer.echo(f"wrote {count:,} {samples} to {export}", err=as_json)
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
def list_builtins(debug: Debug = False) -> None:
    """List the built-in specs, methods and models."""
    from tunegen.compiler.schema import METHODS
    from tunegen.runtime.models import BUILTIN_MODELS

    _debug(debug)

    typer.echo("specs (tunegen cp NAME my_spec.yaml, or tunegen new --spec NAME):")
    for name, path in sorted(builtin_specs().items()):
        typer.echo(f"  {name:<12} {_spec_summary(path)}")
    typer.echo(f"methods: {', '.join(METHODS)}")
    typer.echo(f"models:  {', '.join(sorted(BUILTIN_MODELS))}")


@app.command("cp")
def copy_builtin(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Built-in spec name (see tunegen ls).")
    ],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="File to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite DEST if it exists.")] = False,
    debug: Debug = False,
) -> None:
    """Copy a built-in spec to DEST to edit; its data paths are made absolute so they still resolve."""
    from tunegen.compiler.copy import copy_spec

    _debug(debug)

    builtin = builtin_specs()
    if name not in builtin:
        raise TunegenError(
            f"{name}: no built-in spec of that name (built-in: {', '.join(sorted(builtin))})"
        )
    copy_spec(builtin[name], dest, force=force)
    typer.echo(f"wrote {dest}")


@app.command("schema")
def print_schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file instead.")
    ] = None,
) -> None:
    """Print the spec's JSON Schema (every key, type, range, choice and doc) for editors and tools.

    Specs written by `tunegen cp` point yaml-language-server at the copy shipped with tunegen.
    """
    from tunegen.compiler.schema import json_schema_text

    if output is None:
        typer.echo(json_schema_text(), nl=False)
        return
    from tunegen.compiler.write import write_outputs

    write_outputs({output: json_schema_text()}, force=True)
    typer.echo(f"wrote {output}")


def _is_spec(path: Path) -> bool:
    """A spec, or else a generated config; a file that is neither is an error saying so."""
    from tunegen.compiler.preflight import file_kind

    return file_kind(path) == "spec"


def _overrides(command: str, args: list[str] | None) -> list[str]:
    """The override arguments; an unknown `--option` among them is an error naming `command`."""
    args = list(args or [])
    for arg in args:
        if arg.startswith("-"):
            raise TunegenError(
                f"{PROG} {command}: no such option {arg!r} (see {PROG} {command} --help)"
            )
    return args


def _spec_summary(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2.

    Usage errors (unknown command or option, missing argument) too: one line naming the command
    typed (`error: tunegen new: No such option: --frc Did you mean --force?`), exit status 2.
    """
    _state["debug"] = False  # set again by --debug; main() may run more than once in a process
    try:
        status = typer.main.get_command(app).main(prog_name=PROG, standalone_mode=False)
    except _USAGE_ERROR as exc:  # an unknown command or option, a missing or bad argument
        if _state["debug"]:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tunegen`: the help is the answer
            typer.echo(exc.format_message(), err=True)
            sys.exit(EXIT_USER_ERROR)
        where = exc.ctx.command_path if exc.ctx is not None else PROG
        typer.echo(f"error: {where}: {_one_line(exc.format_message())}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except _CLICK_EXCEPTION as exc:
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except TunegenError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(status if isinstance(status, int) else 0)


# click's exception classes, wherever this typer takes click from (recent typers vendor it).
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(message: str) -> str:
    """Click's message on one line, options quoted as the rest of tunegen quotes them."""
    return " ".join(message.split())
