"""`tunegen update` and `tunegen diff`: regenerate an edited recipe from a changed spec.

update: compile the spec again (the recorded one, or `--spec`), then merge three ways, for the
recipe (`merge.merge_recipe`) and the config (`config_merge.merge_config`): base = the pristine text
recorded when the files were last generated, ours = the user's files, theirs = the new generation.
A clean merge is written atomically and becomes the new base; a conflicting one is written with
markers, listed one per line, exits 1, and leaves the old base in place (the new generation waits
in `pending/`) until `tunegen update FILE --resolved`.

diff: the user's edits (recipe and config) against the recorded generation, as a unified diff.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libcst
import yaml

from tunegen.compiler.config_merge import merge_config
from tunegen.compiler.merge import (
    Labels,
    Merged,
    MergeInputError,
    complete_imports,
    has_conflict_markers,
    merge_recipe,
)
from tunegen.compiler.pipeline import Compiled, compile_spec, provenance_of
from tunegen.compiler.provenance import (
    Provenance,
    has_pending,
    metadata_dir,
    promote_pending,
    read_provenance,
    write_provenance,
)
from tunegen.compiler.write import write_outputs
from tunegen.runtime.errors import TunegenError

__all__ = ["EXIT_CONFLICT", "Outcome", "resolve", "update", "user_diff"]

EXIT_CONFLICT = 1


@dataclass
class Outcome:
    """What a command prints (stdout, stderr) and its exit status."""

    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    status: int = 0


@dataclass(frozen=True)
class _Files:
    """A recipe, its config and its metadata folder, checked to belong together."""

    recipe: Path
    config: Path
    folder: Path
    base: Provenance


@dataclass(frozen=True)
class _Merge:
    """The outcome of merging both files: the user's texts, the merged texts, what to report."""

    ours: dict[Path, str]
    merged: dict[Path, str]
    conflicts: list[str]
    notes: list[str]
    new: Provenance
    crlf: frozenset[Path]  # the user's files with CRLF line ends, written back with them

    @property
    def changes(self) -> dict[Path, str]:
        return {path: text for path, text in self.merged.items() if text != self.ours[path]}


def update(recipe: Path, *, spec: Path | None = None, dry_run: bool = False) -> Outcome:
    """Merge the generation of the current spec and tunegen into the user's recipe and config."""
    files = _locate(recipe)
    if has_pending(files.folder):
        raise TunegenError(
            f"{recipe}: the last update left conflicts; resolve them, then run "
            f"`tunegen update {recipe} --resolved`"
        )
    merge = _merge(files, spec)
    outcome = Outcome(err=list(merge.notes))
    changes = merge.changes
    if dry_run:
        outcome.out += [_unified(path, merge.ours[path], text) for path, text in changes.items()]
        if not changes:
            outcome.out.append(f"{recipe} and {files.config}: update would change nothing")
    else:
        crlf = {
            path: text.replace("\n", "\r\n") for path, text in changes.items() if path in merge.crlf
        }
        write_outputs({**changes, **crlf}, force=True)
        write_provenance(files.folder, merge.new, pending=bool(merge.conflicts))
        conflicted = {line.partition(":")[0] for line in merge.conflicts}
        outcome.out += [
            f"merged {path} with conflicts marked in it"
            if str(path) in conflicted
            else f"updated {path}"
            for path in changes
        ]
        if not changes:
            outcome.out.append(f"{recipe} and {files.config} are up to date")
    if merge.conflicts:
        count = len(merge.conflicts)
        then = "" if dry_run else f", then run `tunegen update {recipe} --resolved`"
        outcome.err += merge.conflicts
        outcome.err.append(
            f"update {'would stop' if dry_run else 'not finished'}: {count} "
            f"conflict{'s' if count > 1 else ''}; resolve the marked lines{then}"
        )
        outcome.status = EXIT_CONFLICT
    return outcome


def _merge(files: _Files, spec: Path | None) -> _Merge:
    """Compile the new generation and merge it into the user's recipe and config (in memory)."""
    ours_recipe, ours_config = _read_ours(files)
    compiled = _compile(files, spec)
    new = _new_record(compiled, files)
    labels = Labels(f"generated {files.base.version}", f"generated {new.version}")
    try:
        recipe = merge_recipe(
            files.base.recipe, ours_recipe, new.recipe, labels=labels, name=str(files.recipe)
        )
    except MergeInputError as exc:
        raise TunegenError(f"{exc}; restore the file or fix it, then run tunegen update") from None
    config = merge_config(
        files.base.config, ours_config, new.config, labels=labels, name=str(files.config)
    )
    _check_merged(files.recipe, recipe)
    conflicts = [
        f"{path}:{c.line}: in {c.where}: conflict ({c.what})"
        for path, merged in ((files.recipe, recipe), (files.config, config))
        for c in merged.conflicts
    ]
    return _Merge(
        ours={files.recipe: ours_recipe, files.config: ours_config},
        merged={files.recipe: recipe.text, files.config: config.text},
        conflicts=conflicts,
        notes=[f"note: {files.config}: {note}" for note in config.notes],
        new=new,
        crlf=frozenset(p for p in (files.recipe, files.config) if b"\r\n" in p.read_bytes()),
    )


def resolve(recipe: Path) -> Outcome:
    """After a conflicting update: check the markers are gone, make the new generation the base."""
    files = _locate(recipe)
    if not has_pending(files.folder):
        raise TunegenError(f"{recipe}: no update is waiting for resolution; nothing to do")
    ours_recipe, ours_config = _read_ours(files, markers_ok=True)
    for path, text in ((files.recipe, ours_recipe), (files.config, ours_config)):
        if has_conflict_markers(text):
            line = next(i for i, t in enumerate(text.splitlines(), 1) if has_conflict_markers(t))
            raise TunegenError(
                f"{path}:{line}: conflict markers are still there; resolve them, then run "
                f"`tunegen update {recipe} --resolved` again"
            )
    _read_ours(files)  # both must parse now
    completed = complete_imports(ours_recipe, str(recipe))
    outcome = Outcome()
    if completed != ours_recipe:
        write_outputs({files.recipe: completed}, force=True)
        outcome.out.append(f"updated {recipe}: added the imports your resolved code uses")
    record = promote_pending(files.folder)
    outcome.out.append(
        f"resolved {recipe}: the next update merges against tunegen {record.version}'s generation"
    )
    return outcome


def user_diff(recipe: Path) -> Outcome:
    """The user's edits to the recipe and config, against what tunegen last generated."""
    files = _locate(recipe)
    outcome = Outcome()
    for path, base in ((files.recipe, files.base.recipe), (files.config, files.base.config)):
        if not path.is_file():
            outcome.out.append(f"{path}: deleted")
            continue
        text = _read_text(path)
        if text != base:
            outcome.out.append(
                _unified(
                    path,
                    base,
                    text,
                    old_label=f"{path} (generated by tunegen {files.base.version})",
                    new_label=f"{path} (yours)",
                )
            )
    if not outcome.out:
        outcome.out.append(
            f"no edits: {files.recipe} and {files.config} are as tunegen generated them"
        )
    return outcome


def _new_record(compiled: Compiled, files: _Files) -> Provenance:
    """The new generation's record, as seen from the directory `tunegen new` ran in."""
    with _working_dir(files.folder / files.base.working_dir):
        return provenance_of(compiled)


def _locate(recipe: Path) -> _Files:
    """The recipe, config and metadata; TunegenError (exit 2) saying what to do if any is off."""
    if recipe.suffix != ".py":
        raise TunegenError(
            f"{recipe}: pass the generated recipe (.py), e.g. generated/my_recipe.py"
        )
    if not recipe.is_file():
        raise TunegenError(f"{recipe}: recipe file not found")
    folder = metadata_dir(recipe)
    if not folder.is_dir():
        raise TunegenError(
            f"{recipe}: no tunegen metadata ({folder}/ is missing); restore it from version control, "
            "or regenerate with `tunegen new --spec SPEC --force` (your edits would be lost)"
        )
    base = read_provenance(folder)
    if base.recipe_name != recipe.name:
        raise TunegenError(
            f"{recipe}: the metadata in {folder}/ is for {base.recipe_name}, not this file; "
            "restore the folder from version control"
        )
    config = recipe.with_name(base.config_name)
    return _Files(recipe, config, folder, base)


def _read_ours(files: _Files, *, markers_ok: bool = False) -> tuple[str, str]:
    """The user's recipe and config; TunegenError if either is missing or does not parse."""
    if not files.config.is_file():
        raise TunegenError(
            f"{files.config}: config file not found; restore it from version control"
        )
    recipe, config = _read_text(files.recipe), _read_text(files.config)
    if markers_ok:
        return recipe, config
    try:
        libcst.parse_module(recipe)
    except libcst.ParserSyntaxError as exc:
        raise TunegenError(
            f"{files.recipe}:{exc.raw_line}: does not parse ({exc.message}); fix it, then run "
            "the command again"
        ) from None
    try:
        yaml.safe_load(config)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", -1) + 1
        raise TunegenError(
            f"{files.config}:{line}: not valid YAML; fix it, then run the command again"
        ) from None
    return recipe, config


def _compile(files: _Files, spec: Path | None) -> Compiled:
    """Compile the spec (recorded, or `spec`) in the directory `tunegen new` ran in."""
    root = (files.folder / files.base.working_dir).resolve()
    spec_path = Path(spec).resolve() if spec else (files.folder / files.base.spec).resolve()
    if not spec_path.is_file():
        shown = spec if spec else spec_path
        raise TunegenError(f"{shown}: spec file not found; pass --spec SPEC")
    if not root.is_dir():
        raise TunegenError(f"{root}: the directory tunegen new ran in is gone; restore it")
    output_dir = files.recipe.resolve().parent
    with _working_dir(root):
        compiled = compile_spec(Path(os.path.relpath(spec_path)), Path(os.path.relpath(output_dir)))
    if compiled.recipe_path.name != files.recipe.name:
        raise TunegenError(
            f"{spec or spec_path}: the spec's name is {compiled.spec.name}, so it generates "
            f"{compiled.recipe_path.name}; set name: {files.recipe.stem} in it to update {files.recipe}"
        )
    return compiled


def _check_merged(recipe: Path, merged: Merged) -> None:
    """A merge without conflicts must parse; if it does not, nothing is written."""
    if merged.conflicts:
        return
    try:
        libcst.parse_module(merged.text)
    except libcst.ParserSyntaxError as exc:
        raise TunegenError(
            f"{recipe}: the merged recipe would not parse (line {exc.raw_line}); nothing written; "
            "see it with `tunegen update --dry-run`"
        ) from None


def _read_text(path: Path) -> str:
    """A user's file as text with `\\n` line ends (a CRLF file merges line for line all the same;
    its line ends are restored when it is written)."""
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        raise TunegenError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _unified(path: Path, old: str, new: str, *, old_label: str = "", new_label: str = "") -> str:
    """A unified diff of `old` -> `new` (3 lines of context), without a trailing newline."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=old_label or f"{path} (now)",
        tofile=new_label or f"{path} (after update)",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    ).rstrip("\n")
