"""How a generated recipe starts: read its config, check it, and turn user errors into one line.

A recipe's `main` is run through `run_main`, which prints a `TunegenError` as `error: ...` and exits
with status 2 (a traceback only with `--debug` or TUNEGEN_DEBUG=1). Any other exception is a bug and
keeps its traceback. Ctrl-C exits 130 and SIGTERM 143 (during training the recipe first saves a
checkpoint: `runtime.interrupt`); either way the command that resumes the run is printed. It also
sets the C allocator to keep freed memory for the next step (`runtime.allocator`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig

from tunegen.runtime.allocator import keep_freed_memory
from tunegen.runtime.config import apply_overrides, load_config, parse_recipe_args
from tunegen.runtime.distributed import is_main_process, refuse_multiprocess_launch
from tunegen.runtime.errors import ConfigError, TunegenError
from tunegen.runtime.interrupt import raise_on_sigterm
from tunegen.runtime.preflight import check_config, format_problems
from tunegen.runtime.run_config import record_invocation, resume_command

__all__ = ["EXIT_USER_ERROR", "load_recipe_config", "report_user_error", "run_main"]

EXIT_USER_ERROR = 2


def load_recipe_config(argv: Sequence[str], *, recipe_file: str | Path) -> DictConfig:
    """Parse `--config F [key=value ...]`, apply the overrides, and check the result.

    The check runs before any model is built: every problem (a typo'd key that the recipe at
    `recipe_file` never reads, an unknown component argument, a missing file) is reported at once.
    """
    config_path, overrides = parse_recipe_args(argv)
    record_invocation(_typed_recipe(recipe_file), config_path, overrides)
    cfg = apply_overrides(load_config(config_path), overrides)
    if "distributed" not in cfg:  # torchrun started copies of a single-device recipe
        refuse_multiprocess_launch(Path(recipe_file).name)
    source = Path(recipe_file).read_text(encoding="utf-8")
    problems = check_config(cfg, recipe_source=source, recipe_name=Path(recipe_file).name)
    if problems:
        raise ConfigError(format_problems(problems, source=str(config_path)))
    return cfg


def run_main(main: Callable[[list[str]], object], argv: Sequence[str]) -> NoReturn:
    """Call `main(argv)` and exit: 0 on success, 2 with a one-line message on a user error."""
    argv = list(argv)
    debug = "--debug" in argv or os.environ.get("TUNEGEN_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    raise_on_sigterm()
    keep_freed_memory()  # each step reuses the last one's memory instead of faulting it in again
    try:
        main(argv)
    except TunegenError as exc:
        if debug:
            raise
        report_user_error(exc)
    except KeyboardInterrupt as exc:
        detail = str(exc) or f"continue with: {resume_command()}"
        print(f"interrupted: {detail}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 130))
    finally:  # a recipe called in-process (tests) leaves the caller's handlers as they were
        for signum, handler in handlers.items():
            if handler is not None:  # None: a handler not set from Python, nothing to restore
                signal.signal(signum, handler)
    sys.exit(0)


def _typed_recipe(recipe_file: str | Path) -> str:
    """The recipe path as the user typed it (`sys.argv[0]`, which `tunegen run` sets), if it
    names `recipe_file`; else `recipe_file` itself."""
    typed = sys.argv[0] if sys.argv else ""
    if typed and Path(typed).resolve() == Path(recipe_file).resolve():
        return typed
    return str(recipe_file)


def report_user_error(error: TunegenError) -> NoReturn:
    """The one way a user error ends tunegen, in `tunegen` and in a recipe run alike: one line
    `error: ...` on stderr (a list of located problems, one per line) and exit status 2.
    In a multi-process run every rank meets the same error; rank 0 alone prints it."""
    if is_main_process():
        print(f"error: {error}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
