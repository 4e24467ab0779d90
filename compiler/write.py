"""Stage 6: write the generated files; the only stage that touches the disk.

A generated recipe becomes the user's code the moment it is written, so an existing file is never
replaced unless the user asks with `force`. Both files are checked before either is written, and
each is written to a temporary file first and renamed, so an interrupted write leaves no half file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tunegen.runtime.errors import TunegenError

__all__ = ["write_outputs"]


def write_outputs(
    outputs: dict[Path, str], *, force: bool = False, editable: bool = True
) -> list[Path]:
    """Write each path's text; refuse (before writing anything) to replace files unless `force`.

    `editable` files (a recipe, a config, a spec) are the user's to edit, so the refusal warns
    that edits would be lost; an export is data, rewritten as a whole.
    """
    existing = [path for path in outputs if path.exists()]
    if existing and not force:
        raise TunegenError(_exists_message(existing, editable=editable))
    for path, text in outputs.items():
        _atomic_write(path, text)
    return list(outputs)


def _exists_message(existing: list[Path], *, editable: bool) -> str:
    """`x.py already exists; ...` for one file, `x.py and x.yaml already exist; ...` for two."""
    names = [str(p) for p in existing]
    one = len(names) == 1
    listed = names[0] if one else ", ".join(names[:-1]) + f" and {names[-1]}"
    verb, it = ("exists", "it") if one else ("exist", "them")
    lost = f" (edits in {it} would be lost)" if editable else ""
    recipes = [p for p in existing if p.suffix == ".py"]
    update = (
        f"to bring a changed spec into your edited recipe run `tunegen update {recipes[0]}`, or "
        if editable and recipes
        else ""
    )
    return f"{listed} already {verb}; {update}pass --force to overwrite {it}{lost}"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The mode the written file gets: the replaced file's (an update keeps it), else the usual
    0o666 less the umask (mkstemp's 0o600 would hide a recipe from the user's group)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
