"""`tunegen validate`: check a spec or a generated config without loading any weights.

For a spec: the spec is validated and compiled in memory, and the config it would generate is
checked against the recipe it would generate. For a config: overrides are applied, then every
component, argument, type, file and unread key is checked against the recipe next to it. Either
way the tokenizer and the dataset are then built as the recipe builds them, so a bad record, a
template the tokenizer cannot render or too little data for one step is found before a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from omegaconf import DictConfig, OmegaConf

from tunegen.compiler.cli.app import (
    OVERRIDES_HELP,
    Debug,
    Overrides,
    app,
    is_spec,
    overrides_of,
    set_debug,
)
from tunegen.compiler.cli.data_view import build_data_view, compiled_config
from tunegen.compiler.pipeline import compile_spec
from tunegen.runtime.config import apply_overrides, load_config
from tunegen.runtime.errors import ConfigError, DataError, TunegenError
from tunegen.runtime.preflight import check_config, format_problems

__all__ = ["check_config_file", "check_data", "check_spec_file", "file_kind", "validate"]

# Top-level keys of a tunegen spec (a file with any of these and no component sections is a spec).
_SPEC_KEYS = ("name", "method", "model", "data")
_EXPECTED = (
    "expected a tunegen spec (name, method, model, data: ...) or a generated config "
    "(sections with _component_)"
)
# Other tools' configs, recognised by keys they always have, so the error can say what it is.
_FOREIGN = (
    ("an axolotl config", ("base_model", "datasets")),
    ("a Hugging Face model config", ("architectures", "model_type")),
    ("a Hugging Face tokenizer config", ("tokenizer_class",)),
)


@app.command(
    context_settings={"ignore_unknown_options": True},
    epilog=OVERRIDES_HELP + "\n\n\b\nExamples:\n"
    "  tunegen validate my_spec.yaml\n"
    "  tunegen validate generated/lora.yaml training.lr=1e-3",
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
    set_debug(debug)
    overrides = overrides_of("validate", overrides)
    if is_spec(path):
        summary = check_spec_file(path, overrides)
    else:
        summary = check_config_file(path, overrides, recipe=recipe)
    typer.echo(summary)


def file_kind(path: Path) -> Literal["spec", "config"]:
    """Whether `path` holds a spec or a generated config; a `TunegenError` saying what the file
    looks like when it is neither (empty, a list, another tool's config, unrelated keys)."""
    if path.suffix == ".py":
        config = path.with_suffix(".yaml")
        raise TunegenError(
            f"{path}: this is a recipe; pass its config (e.g. {config}); {_EXPECTED}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunegenError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TunegenError(f"{path}: is a directory; {_EXPECTED}") from None
    except (OSError, UnicodeDecodeError):
        return "spec" if path.suffix in (".yaml", ".yml") else "config"  # the loader will say
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:  # the spec or config loader reports it with file:line
        return "spec" if "method:" in text else "config"
    if isinstance(data, dict) and _has_components(data):
        return "config"
    if isinstance(data, dict) and any(key in data for key in _SPEC_KEYS):
        return "spec"
    looks_like = _looks_like(data)
    if "axolotl" in looks_like:  # tunegen import turns it into a spec
        raise TunegenError(
            f"{path}: {looks_like}; turn it into a spec with: tunegen import {path} -o spec.yaml"
        )
    raise TunegenError(f"{path}: {looks_like}; {_EXPECTED}")


def _has_components(data: dict) -> bool:
    """A generated config names its components: `_component_` at the top of some section."""
    return any(
        isinstance(section, dict)
        and (
            "_component_" in section
            or any(isinstance(v, dict) and "_component_" in v for v in section.values())
        )
        for section in data.values()
    )


def _looks_like(data: Any) -> str:
    """What a YAML document that is neither a spec nor a config looks like, in a few words."""
    if data is None:
        return "the file is empty"
    if isinstance(data, list):
        return f"the file holds a list ({len(data)} items), not a mapping of keys"
    if not isinstance(data, dict):
        return f"the file holds a single value ({str(data)[:40]!r}), not a mapping of keys"
    for what, keys in _FOREIGN:
        if all(key in data for key in keys):
            return f"this looks like {what} ({', '.join(keys)})"
    if "base_model" in data:
        return "this looks like an axolotl config (base_model)"
    keys = ", ".join(str(key) for key in list(data)[:5])
    more = ", ..." if len(data) > 5 else ""
    return f"the file has keys {keys}{more}, none of a spec's nor a component section"


def check_spec_file(path: Path, overrides: Sequence[str] = ()) -> str:
    """Validate the spec at `path`, the config it compiles to (with `overrides` applied, as
    `tunegen run` would apply them) and its data; return a one-line summary."""
    compiled = compile_spec(path)
    cfg = apply_overrides(compiled_config(compiled), overrides)
    problems = check_config(
        cfg, recipe_source=compiled.rendered.recipe, recipe_name=compiled.recipe_path.name
    )
    if problems:  # the compiler produced a config its own recipe rejects: a tunegen bug
        raise TunegenError(format_problems(problems, source=f"{path} (compiled config)"))
    return (
        f"ok: {path} is a valid {compiled.spec.method} spec (would write "
        f"{compiled.recipe_path}); {check_data(cfg)}"
    )


def check_config_file(path: Path, overrides: Sequence[str], *, recipe: Path | None = None) -> str:
    """Check the config at `path` with `overrides` applied, and its data; return a summary.

    The recipe (by default the `.py` file of the same name next to the config) tells which keys are
    read; without one, that check is skipped and the summary says so.
    """
    cfg = apply_overrides(load_config(path), overrides)
    recipe = recipe or path.with_suffix(".py")
    if recipe.is_file():
        source = recipe.read_text(encoding="utf-8")
    elif recipe == path.with_suffix(".py"):
        source = None
    else:
        raise ConfigError(f"{recipe}: recipe file not found")
    problems = check_config(cfg, recipe_source=source, recipe_name=recipe.name)
    if problems:
        raise ConfigError(format_problems(problems, source=str(path)))
    if source is not None and "compile_blocks(" in source:
        _check_compiler(recipe, cfg.environment.device)
    unread_note = (
        ""
        if source is not None
        else " (no recipe found: unread keys and arguments the recipe passes not checked)"
    )
    return f"ok: {path}{unread_note}; {check_data(cfg)}"


def _check_compiler(recipe: Path, device: str) -> None:
    """A recipe compiled with training.compile needs a C++ compiler to compile for the CPU."""
    from tunegen.runtime.compiling import missing_compiler
    from tunegen.runtime.environment import resolve_device

    why = missing_compiler(resolve_device(device).type)
    if why is not None:
        raise ConfigError(
            f"{recipe}: {why}; install one, or compile the spec with training.compile: false"
        )


def check_data(cfg: DictConfig) -> str:
    """Build the tokenizer and dataset as the recipe's `setup()` does (no weights), read the eval
    data as its `evaluate()` does, and check that one optimizer step has samples enough.

    Every bad record is reported, not only the first (the dataset collects them). Returns a short
    summary of the data.
    """
    if "dataset" not in cfg or "tokenizer" not in cfg:
        return "no dataset section: data not checked"
    view = build_data_view(cfg)
    samples = len(view.dataset)
    training, validation = _split_sizes(cfg, samples)
    per_step = view.batch_size * int(OmegaConf.select(cfg, "training.grad_accum", default=1))
    if training < per_step:
        held_out = f" ({validation} held out for validation)" if validation else ""
        raise DataError(
            f"dataset: {training} samples{held_out} are too few for one optimizer step "
            "(dataloader.batch_size x training.grad_accum)"
        )
    _check_eval_data(cfg)
    dropped = getattr(view.dataset, "num_dropped", 0)
    split = f" ({training:,} training, {validation:,} validation)" if validation else ""
    text = f"data: {samples:,} samples{split}, {dropped:,} records dropped"
    val_samples = _check_val_data(cfg, view.tokenizer)
    return text if val_samples is None else f"{text}; validation data: {val_samples:,} samples"


def _split_sizes(cfg: DictConfig, samples: int) -> tuple[int, int]:
    """(training, validation) samples of the dataset, split as `dataloader.val_split` asks."""
    fraction = OmegaConf.select(cfg, "dataloader.val_split", default=None)
    if fraction is None:
        return samples, 0
    from tunegen.runtime.validation import split_sizes

    return split_sizes(samples, fraction)


def _check_val_data(cfg: DictConfig, tokenizer: Any) -> int | None:
    """Build the validation data of a `val_dataset` section as the recipe does (every bad record
    reported as `file:line: reason`); its sample count, or None without one."""
    if "val_dataset" not in cfg:
        return None
    from tunegen.runtime.config import instantiate

    dataset = instantiate(cfg.val_dataset, tokenizer=tokenizer)
    if len(dataset) == 0:
        raise DataError(f"val_dataset: {cfg.val_dataset.source} holds no sample to validate on")
    return len(dataset)


def _check_eval_data(cfg: DictConfig) -> None:
    """Read the held-out records as evaluation reads them, so a bad one fails now."""
    if "eval" not in cfg:
        return
    from tunegen.runtime.data import read_instruct_examples

    read_instruct_examples(cfg.eval.source, template=cfg.eval.template)
