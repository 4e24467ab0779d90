"""What `tunegen new` records beside its outputs, so `tunegen update` can merge later.

`generated/.tunegen/<name>/` is meant to be committed with the recipe. It holds the spec as it was
compiled, where the spec file is, the tunegen version, and the pristine generated recipe and config:
the base of the next three-way merge. The base is this recorded text, never a re-render with the
current templates (after an upgrade the old templates are gone).

    tunegen.json     {"tunegen_version", "spec", "working_dir", "recipe", "config"}
    spec.yaml        the spec text that was compiled
    recipe.py.txt    the recipe as generated (not .py: no linter or test runner should pick it up)
    config.yaml.txt  the config as generated
    pending/         after a conflicting update: the new generation, which becomes the base once
                     the user resolves the conflicts and runs `tunegen update --resolved`

Paths are stored relative to the folder itself, so a cloned repository still finds the spec.
`working_dir` is the directory `tunegen new` ran in: the generated config's data paths are
relative to it, so `update` compiles from there too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunegen.compiler.write import write_outputs
from tunegen.runtime.errors import TunegenError

__all__ = [
    "Provenance",
    "clear_pending",
    "has_pending",
    "metadata_dir",
    "promote_pending",
    "read_provenance",
    "record_provenance",
    "write_provenance",
]

META_FILE = "tunegen.json"
SPEC_FILE = "spec.yaml"
RECIPE_FILE = "recipe.py.txt"
CONFIG_FILE = "config.yaml.txt"
PENDING = "pending"
README = (
    "tunegen records here what it generated for ../../{recipe}, so that `tunegen update` can\n"
    "merge a changed spec into your edited recipe. Commit this folder with the recipe.\n"
)


@dataclass(frozen=True)
class Provenance:
    """One recorded generation of a recipe and its config."""

    spec_text: str
    spec: str  # the spec file, relative to the metadata folder
    working_dir: str  # where `tunegen new` ran, relative to the metadata folder
    version: str
    recipe_name: str
    config_name: str
    recipe: str
    config: str


def metadata_dir(recipe_path: Path) -> Path:
    """The metadata folder of `generated/<name>.py`: `generated/.tunegen/<name>/`."""
    return recipe_path.parent / ".tunegen" / recipe_path.stem


def record_provenance(
    *,
    spec_path: Path,
    spec_text: str,
    version: str,
    recipe_path: Path,
    config_path: Path,
    recipe: str,
    config: str,
) -> Provenance:
    """The provenance of a generation compiled in the current directory."""
    folder = metadata_dir(recipe_path)
    return Provenance(
        spec_text=spec_text,
        spec=_relative(spec_path, folder),
        working_dir=_relative(Path.cwd(), folder),
        version=version,
        recipe_name=recipe_path.name,
        config_name=config_path.name,
        recipe=recipe,
        config=config,
    )


def write_provenance(folder: Path, record: Provenance, *, pending: bool = False) -> None:
    """Write `record` into `folder` (or its `pending/`); unchanged files are left untouched."""
    target = folder / PENDING if pending else folder
    meta = {
        "tunegen_version": record.version,
        "spec": record.spec,
        "working_dir": record.working_dir,
        "recipe": record.recipe_name,
        "config": record.config_name,
    }
    files = {
        target / META_FILE: json.dumps(meta, indent=2) + "\n",
        target / SPEC_FILE: record.spec_text,
        target / RECIPE_FILE: record.recipe,
        target / CONFIG_FILE: record.config,
    }
    if not pending:
        files[folder / "README"] = README.format(recipe=record.recipe_name)
    changed = {path: text for path, text in files.items() if _read(path) != text}
    write_outputs(changed, force=True)


def read_provenance(folder: Path, *, pending: bool = False) -> Provenance:
    """The generation recorded in `folder` (or its `pending/`); TunegenError if unreadable."""
    target = folder / PENDING if pending else folder
    try:
        meta = json.loads((target / META_FILE).read_text(encoding="utf-8"))
        return Provenance(
            spec_text=(target / SPEC_FILE).read_text(encoding="utf-8"),
            spec=meta["spec"],
            working_dir=meta["working_dir"],
            version=meta["tunegen_version"],
            recipe_name=meta["recipe"],
            config_name=meta["config"],
            recipe=(target / RECIPE_FILE).read_text(encoding="utf-8"),
            config=(target / CONFIG_FILE).read_text(encoding="utf-8"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TunegenError(
            f"{target}: tunegen metadata is unreadable ({exc.__class__.__name__}: {exc}); "
            "restore it from version control"
        ) from None


def has_pending(folder: Path) -> bool:
    """Whether a conflicting update waits for `tunegen update --resolved`."""
    return (folder / PENDING / META_FILE).is_file()


def clear_pending(folder: Path) -> None:
    """Forget a waiting update (a fresh `tunegen new --force` replaces what it merged)."""
    shutil.rmtree(folder / PENDING, ignore_errors=True)


def promote_pending(folder: Path) -> Provenance:
    """Make the pending generation the base; returns it."""
    record = read_provenance(folder, pending=True)
    write_provenance(folder, record)
    shutil.rmtree(folder / PENDING)
    return record


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None
