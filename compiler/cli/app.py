"""The Typer app the commands register on, what they share, and `main`, the console entry point.

Every user error is one line on stderr and exit status 2 (usage errors too, naming the command
typed); `--debug`, before or after the command, shows the traceback.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from tunegen.compiler.plan import tunegen_version
from tunegen.runtime.errors import TunegenError
from tunegen.runtime.launch import EXIT_USER_ERROR, report_user_error

__all__ = [
    "OVERRIDES_HELP",
    "PROG",
    "Debug",
    "Overrides",
    "app",
    "builtin_specs",
    "debug_enabled",
    "is_spec",
    "main",
    "overrides_of",
    "set_debug",
    "spec_path",
]


class _Commands(TyperGroup):
    """Lists the commands in the order a user meets them (each lives in its own module)."""

    ORDER = (
        "new",
        "import",
        "validate",
        "run",
        "plot",
        "generate",
        "eval",
        "data",
        "update",
        "diff",
        "ls",
        "cp",
        "schema",
    )

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(self.ORDER)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    cls=_Commands,
    help="Compile a short fine-tuning spec into a readable PyTorch recipe and config you own.",
    add_completion=True,  # tunegen --install-completion (bash, zsh, fish, PowerShell)
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


def debug_enabled() -> bool:
    """Whether `--debug` was given: errors then keep their traceback."""
    return _state["debug"]


def set_debug(debug: bool) -> None:
    """Remember `--debug`, given before or after the command name."""
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
    set_debug(debug)


def builtin_specs() -> dict[str, Path]:
    """The specs shipped with tunegen, by name (the file stem)."""
    folder = files("tunegen.specs")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def spec_path(spec: str) -> Path:
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


def is_spec(path: Path) -> bool:
    """A spec, or else a generated config; a file that is neither is an error saying so."""
    from tunegen.compiler.cli.validate import file_kind

    return file_kind(path) == "spec"


def overrides_of(command: str, args: list[str] | None) -> list[str]:
    """The override arguments; an unknown `--option` among them is an error naming `command`."""
    args = list(args or [])
    for arg in args:
        if arg.startswith("-"):
            raise TunegenError(
                f"{PROG} {command}: no such option {arg!r} (see {PROG} {command} --help)"
            )
    return args


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
        report_user_error(exc)
    sys.exit(status if isinstance(status, int) else 0)


# click's exception classes, wherever this typer takes click from (recent typers vendor it).
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _one_line(message: str) -> str:
    """Click's message on one line, options quoted as the rest of tunegen quotes them."""
    return " ".join(message.split())
