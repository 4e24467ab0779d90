"""The `tunegen` command line, one module per command; the compiler pipeline lives beside it.

    tunegen new --spec lora.yaml        compile a spec into generated/<name>.py and .yaml   (new.py)
    tunegen import CONFIG [-o SPEC]     a torchtune or axolotl config into a spec    (import_config.py)
    tunegen validate FILE [key=value]   check a spec or a config and its data, no weights (validate.py)
    tunegen run RECIPE [--config F] [key=value ...]                                      (run.py)
    tunegen data FILE [--show N] [--packed] [--json] [--export F]   the data as the model sees it
    tunegen update RECIPE [--spec F] [--dry-run] [--resolved]   a changed spec into your edits (update.py)
    tunegen diff RECIPE                 your edits against what tunegen generated           (update.py)
    tunegen plot RUN_DIR... [-o F]      loss, lr and tokens/s curves of runs, as one PNG     (plot.py)
    tunegen generate RUN_DIR_OR_MODEL (--prompt TEXT | --chat)   talk to a trained model (generate.py)
    tunegen eval RUN_DIR_OR_MODEL --data F [--json]   perplexity and exact match on a file  (eval.py)
    tunegen ls                          built-in specs, methods and models                  (specs.py)
    tunegen cp NAME DEST                copy a built-in spec to edit                        (specs.py)
    tunegen schema [--output F]         the spec's JSON Schema, for editors and tools       (specs.py)

`app.py` holds the Typer app the commands register on and `main`, the console entry point.
"""

from tunegen.compiler.cli import (  # noqa: F401  (importing a command module registers it)
    data,
    eval,
    generate,
    import_config,
    new,
    plot,
    run,
    specs,
    update,
    validate,
)
from tunegen.compiler.cli.app import app, builtin_specs, main

__all__ = ["app", "builtin_specs", "main"]
