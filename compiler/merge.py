"""Three-way merge of a regenerated recipe: the user's edits and the new generation, both kept.

base = the recipe tunegen generated last time (recorded pristine text), ours = the user's file,
theirs = what the current tunegen generates from the current spec. The merge is structural first:
libcst splits each version into pieces keyed by qualified name (the module header, the import
block, module-level code, each top-level function, each class's head, each method), so a change in
one function never conflicts with an edit in another. Each piece present in all three is merged
line by line (`merge_lines`, a diff3 in the manner of git's); overlapping changes become a conflict
with the markers git and editors understand. Imports are merged as sets (the union, minus what
either side removed) and written back sorted as tunegen writes them.

The merged text is never reformatted: a piece the user did not touch arrives as the new generation
wrote it (already formatted), a piece the user edited keeps the user's layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

import libcst
from libcst.metadata import MetadataWrapper, PositionProvider

from tunegen.compiler.formatting import format_python
from tunegen.compiler.imports import (
    FROM_IMPORTS,
    MODULE_IMPORTS,
    _is_stdlib,
    _member_key,
    unbound_names,
)

__all__ = [
    "Conflict",
    "Labels",
    "MergeInputError",
    "Merged",
    "complete_imports",
    "has_conflict_markers",
    "merge_keyed",
    "merge_lines",
    "merge_recipe",
]

MARK_OURS = "<<<<<<< yours"
MARK_BASE = "|||||||"
MARK_SPLIT = "======="
MARK_THEIRS = ">>>>>>>"


class MergeInputError(ValueError):
    """One of the three texts cannot be merged (it does not parse); the message says which."""


@dataclass(frozen=True)
class Labels:
    """How conflict markers name the two generations: `generated <old>` and `generated <new>`."""

    base: str = "generated"
    theirs: str = "generated"


@dataclass(frozen=True)
class Conflict:
    """A conflict left in merged text: its marker's 1-based line, where it is, and what clashed."""

    line: int
    where: str
    what: str

    def shifted(self, lines: int) -> Conflict:
        return Conflict(self.line + lines, self.where, self.what)


@dataclass(frozen=True)
class Merged:
    """Merged text and the conflicts (with markers in `text`) it holds."""

    text: str
    conflicts: tuple[Conflict, ...] = field(default=())


# ---------------------------------------------------------------- line-level three-way merge


def merge_lines(
    base: str, ours: str, theirs: str, *, labels: Labels = Labels(), where: str = "", what: str = ""
) -> Merged:
    """diff3 of three texts: changes on one side only are applied; changes of both sides to the
    same (or adjacent) lines are a conflict, unless both made the same change.

    Conflicts are written with git's diff3 markers; each is reported with `where` and `what`
    (default: "both changed these lines").
    """
    b, o, t = (_lines(x) for x in (base, ours, theirs))
    out: list[str] = []
    conflicts: list[Conflict] = []
    for kind, chunk in _merge_regions(b, o, t):
        if kind == "conflict":
            cb, co, ct = chunk
            conflicts.append(Conflict(len(out) + 1, where, what or "both changed these lines"))
            out += conflict_block(cb, co, ct, labels)
        else:
            out += chunk
    return Merged("".join(out), tuple(conflicts))


def conflict_block(
    base: Sequence[str], ours: Sequence[str], theirs: Sequence[str], labels: Labels
) -> list[str]:
    """The lines of one conflict, marked as git marks a diff3 conflict."""
    return [
        MARK_OURS + "\n",
        *_terminated(ours),
        f"{MARK_BASE} {labels.base}\n",
        *_terminated(base),
        MARK_SPLIT + "\n",
        *_terminated(theirs),
        f"{MARK_THEIRS} {labels.theirs}\n",
    ]


def has_conflict_markers(text: str) -> bool:
    """Whether `text` still holds a conflict marker line written by a merge (a lone `=======`
    alone is not one: it underlines a heading in a docstring)."""
    return any(
        line.startswith((MARK_OURS, MARK_BASE + " ", MARK_THEIRS + " "))
        for line in text.splitlines()
    )


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _terminated(lines: Sequence[str]) -> list[str]:
    """Lines that each end with a newline (a last line without one would swallow a marker)."""
    return [line if line.endswith("\n") else line + "\n" for line in lines]


def _merge_regions(b: list[str], o: list[str], t: list[str]) -> Iterable[tuple[str, object]]:
    """("lines", [...]) for merged stretches and ("conflict", (base, ours, theirs)) for clashes."""
    zb = zo = zt = 0
    for sb, eb, so, eo, st, et in _sync_regions(b, o, t):
        region_b, region_o, region_t = b[zb:sb], o[zo:so], t[zt:st]
        if region_o or region_t or region_b:
            if region_o == region_t or region_t == region_b:
                yield "lines", region_o
            elif region_o == region_b:
                yield "lines", region_t
            else:
                yield "conflict", (region_b, region_o, region_t)
        yield "lines", b[sb:eb]
        zb, zo, zt = eb, eo, et


def _sync_regions(b: list[str], o: list[str], t: list[str]) -> list[tuple[int, ...]]:
    """Stretches of base unchanged on both sides: (base start, end, ours start, end, theirs start,
    end), ending with the empty stretch at the end of all three (the classic merge3 algorithm)."""
    ours_matches = _matching_blocks(b, o)
    theirs_matches = _matching_blocks(b, t)
    regions = []
    i = j = 0
    while i < len(ours_matches) and j < len(theirs_matches):
        ob, oo, olen = ours_matches[i]
        tb, tt, tlen = theirs_matches[j]
        start, end = max(ob, tb), min(ob + olen, tb + tlen)
        if start < end:
            so, st = oo + start - ob, tt + start - tb
            regions.append((start, end, so, so + end - start, st, st + end - start))
        if ob + olen < tb + tlen:
            i += 1
        else:
            j += 1
    regions.append((len(b), len(b), len(o), len(o), len(t), len(t)))
    return regions


def _matching_blocks(a: list[str], b: list[str]) -> list[tuple[int, int, int]]:
    return [tuple(m) for m in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()]


# ---------------------------------------------------------------- merge of keyed pieces


# The key of text after the last keyed piece (a config's closing comments).
END = "<end>"

PieceMerge = Callable[[str, str, str, str], Merged]


def dotted_nesting(key: str) -> list[str]:
    """The containers of a dotted key, then the key: `a.b.c` -> [`a`, `a.b`, `a.b.c`]."""
    parts = key.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def merge_keyed(
    base: dict[str, str],
    ours: dict[str, str],
    theirs: dict[str, str],
    *,
    labels: Labels,
    merge_piece: PieceMerge | None = None,
    describe: Callable[[str], str] = str,
    kind: Callable[[str], str] = lambda key: "piece",
    nesting: Callable[[str], list[str]] = dotted_nesting,
) -> list[tuple[str, Merged]]:
    """Merge three ordered maps of key -> text; returns the merged pieces in output order.

    The order is theirs', with the pieces only ours has (the user's additions) placed after the
    piece they follow in ours, but outside any container (`nesting(key)`: class, config section)
    they are not in. A piece both kept is merged with `merge_piece(key, b, o, t)` (line-level by
    default); one the user deleted stays deleted, one the new generation removed goes, unless the
    other side changed it: then it is a conflict.
    """
    merge_piece = merge_piece or (
        lambda key, b, o, t: merge_lines(b, o, t, labels=labels, where=describe(key))
    )
    merged: list[tuple[str, Merged]] = []
    for key in _merged_order(ours, theirs, nesting):
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if o is not None and t is not None:
            if b is not None:
                result = merge_piece(key, b, o, t)
            elif o == t:
                result = Merged(o)
            else:  # both added a piece of this name
                result = merge_lines("", o, t, labels=labels, where=describe(key))
        elif o is not None:  # ours only: a user addition, or a piece the generation removed
            if b is None:
                result = Merged(o)
            elif o == b:
                continue
            else:
                what = f"you changed this {kind(key)}; the new generation removes it"
                result = _whole_conflict(b, o, "", labels, describe(key), what)
        elif t is not None:  # theirs only: new from the generation, or one the user deleted
            if b is None:
                result = Merged(t)
            elif t == b:
                continue
            else:
                what = f"you deleted this {kind(key)}; the new generation changes it"
                result = _whole_conflict(b, "", t, labels, describe(key), what)
        else:
            continue
        merged.append((key, result))
    return merged


def _merged_order(
    ours: dict[str, str], theirs: dict[str, str], nesting: Callable[[str], list[str]]
) -> list[str]:
    """theirs' keys in order; each key only ours has goes after its predecessor in ours, but never
    inside a container (class, config section) it is not in; END last."""
    order = list(theirs)
    placed = set(order)
    previous: str | None = None
    for key in ours:
        if key not in placed:
            index = order.index(previous) + 1 if previous is not None else 0
            foreign = set(nesting(previous)) - set(nesting(key)[:-1]) if previous else set()
            while index < len(order) and foreign & set(nesting(order[index])):
                index += 1
            order.insert(index, key)
            placed.add(key)
        previous = key
    return sorted(order, key=lambda key: key == END)  # trailing text stays at the end


def _whole_conflict(b: str, o: str, t: str, labels: Labels, where: str, what: str) -> Merged:
    lines = conflict_block(_lines(b), _lines(o), _lines(t), labels)
    return Merged("".join(lines), (Conflict(1, where, what),))


def join_pieces(pieces: Iterable[Merged]) -> Merged:
    """Concatenate merged pieces; conflict lines are made relative to the whole text."""
    text: list[str] = []
    conflicts: list[Conflict] = []
    line = 0
    for piece in pieces:
        conflicts += [c.shifted(line) for c in piece.conflicts]
        text.append(piece.text)
        line += piece.text.count("\n")
    return Merged("".join(text), tuple(conflicts))


# ---------------------------------------------------------------- the recipe: structure


IMPORTS = "<imports>"
HEADER = "<header>"
MODULE = "<module>"


@dataclass(frozen=True)
class Structure:
    """A recipe cut into consecutive pieces (key -> text, in file order; they join to the file)
    and the atoms of its import block."""

    pieces: dict[str, str]
    imports: frozenset[tuple[str, ...]]
    classes: tuple[str, ...] = ()

    def renamed(self, names: dict[str, str]) -> Structure:
        """The same pieces with the classes in `names` keyed by their new names."""
        if not names:
            return self
        pieces = {_renamed_key(key, names): text for key, text in self.pieces.items()}
        classes = tuple(names.get(c, c) for c in self.classes)
        return Structure(pieces, self.imports, classes)


def _renamed_key(key: str, names: dict[str, str]) -> str:
    prefix = "after " if key.startswith("after ") else ""
    head, dot, rest = key.removeprefix(prefix).partition(".")
    return prefix + names.get(head, head) + dot + rest


def class_renames(base: Structure, other: Structure) -> dict[str, str]:
    """other's class names -> base's, for classes renamed between them (the recipe class is
    named after the method: LoRAFinetuneRecipe becomes DoRAFinetuneRecipe), paired in order."""
    gone = [c for c in base.classes if c not in other.classes]
    new = [c for c in other.classes if c not in base.classes]
    return dict(zip(new, gone, strict=True)) if len(gone) == len(new) else {}


def split_recipe(source: str, name: str = "recipe") -> Structure:
    """Cut `source` into pieces by qualified name; raises MergeInputError if it does not parse."""
    try:
        wrapper = MetadataWrapper(libcst.parse_module(source), unsafe_skip_copy=True)
    except libcst.ParserSyntaxError as exc:
        raise MergeInputError(f"{name}:{exc.raw_line}: does not parse: {exc.message}") from None
    positions = wrapper.resolve(PositionProvider)
    body = list(wrapper.module.body)
    cuts, imports = _cuts(body, positions)
    lines = _lines(source)
    starts = [0, *[start for start, _ in cuts], len(lines)]
    keys = [HEADER, *[key for _, key in cuts]]
    pieces = {
        key: "".join(lines[starts[i] : starts[i + 1]])
        for i, key in enumerate(keys)
        if starts[i] < starts[i + 1]
    }
    classes = tuple(key for _, key in cuts if key in _class_names(body))
    return Structure(pieces, frozenset(imports), classes)


def _cuts(body: list[libcst.BaseStatement], positions) -> tuple[list[tuple[int, str]], set]:
    """Where each piece starts (0-based line, key), in file order, and the import block's atoms.

    Before the first definition: the header, the leading run of imports, module-level code. Then
    each function and class (and each method of a class) and the code after it.
    """
    cuts: list[tuple[int, str]] = []
    imports: set[tuple[str, ...]] = set()
    first_def = next(
        (i for i, s in enumerate(body) if isinstance(s, (libcst.FunctionDef, libcst.ClassDef))),
        len(body),
    )
    import_run = _leading_import_run(body[:first_def])
    if import_run:
        start, end = import_run
        cuts.append((_region_start(body[start], positions), IMPORTS))
        for stmt in body[start:end]:
            imports |= _import_atoms(stmt)
        if end < len(body):
            cuts.append((_region_start(body[end], positions), MODULE))
    elif first_def:
        cuts.append((0, MODULE))
    seen: dict[str, int] = {}
    for stmt in body[first_def:]:
        _cut_statement(stmt, positions, cuts, seen)
    cuts.sort(key=lambda cut: cut[0])  # stable: an empty "after" piece stays before its neighbour
    return cuts, imports


def _class_names(body: Sequence[libcst.BaseStatement]) -> set[str]:
    return {s.name.value for s in body if isinstance(s, libcst.ClassDef)}


def _cut_statement(stmt: libcst.BaseStatement, positions, cuts: list, seen: dict) -> None:
    """Cut points of one top-level statement after the first definition."""
    if isinstance(stmt, libcst.FunctionDef):
        key = _unique(stmt.name.value, seen)
        cuts.append((_region_start(stmt, positions), key))
        cuts.append((positions[stmt].end.line, f"after {key}"))
    elif isinstance(stmt, libcst.ClassDef):
        key = _unique(stmt.name.value, seen)
        cuts.append((_region_start(stmt, positions), key))
        for inner in stmt.body.body:
            if isinstance(inner, libcst.FunctionDef):
                method = _unique(f"{key}.{inner.name.value}", seen)
                cuts.append((_region_start(inner, positions), method))
                cuts.append((positions[inner].end.line, f"after {method}"))
        cuts.append((positions[stmt].end.line, f"after {key}"))


def _unique(key: str, seen: dict[str, int]) -> str:
    """`key`, or `key#2`, `key#3`... for a name defined twice (a property's setter)."""
    seen[key] = seen.get(key, 0) + 1
    return key if seen[key] == 1 else f"{key}#{seen[key]}"


def _region_start(stmt: libcst.BaseStatement, positions) -> int:
    """0-based first line of `stmt` with its decorators and the comments and blank lines above."""
    first = stmt.decorators[0] if getattr(stmt, "decorators", None) else stmt
    return positions[first].start.line - 1 - len(stmt.leading_lines)


def _leading_import_run(body: Sequence[libcst.BaseStatement]) -> tuple[int, int] | None:
    """(start, end) of the first run of consecutive import statements, if any."""
    start = next((i for i, s in enumerate(body) if _is_import(s)), None)
    if start is None:
        return None
    end = start
    while end < len(body) and _is_import(body[end]):
        end += 1
    return start, end


def _is_import(stmt: libcst.CSTNode) -> bool:
    return isinstance(stmt, libcst.SimpleStatementLine) and all(
        isinstance(s, (libcst.Import, libcst.ImportFrom)) for s in stmt.body
    )


def _import_atoms(stmt: libcst.SimpleStatementLine) -> set[tuple[str, ...]]:
    """("import", module, alias) or ("from", module, name, alias) for each imported name."""
    atoms: set[tuple[str, ...]] = set()
    empty = libcst.Module([])
    for node in stmt.body:
        if isinstance(node, libcst.Import):
            for alias in node.names:
                atoms.add(("import", empty.code_for_node(alias.name), _asname(alias, empty)))
        else:
            module = "." * len(node.relative) + (
                empty.code_for_node(node.module) if node.module else ""
            )
            if isinstance(node.names, libcst.ImportStar):
                atoms.add(("from", module, "*", ""))
                continue
            for alias in node.names:
                atoms.add(("from", module, empty.code_for_node(alias.name), _asname(alias, empty)))
    return atoms


def _asname(alias: libcst.ImportAlias, empty: libcst.Module) -> str:
    return empty.code_for_node(alias.asname.name) if alias.asname else ""


def import_block(atoms: Iterable[tuple[str, ...]]) -> str:
    """The import statements for `atoms`, sorted and formatted as tunegen writes them:
    `from __future__`, then the standard library, then the rest, `import x` before `from x`."""
    atoms = set(atoms)
    future = {a for a in atoms if a[0] == "from" and a[1] == "__future__"}
    stdlib = {a for a in atoms - future if a[1][:1] != "." and _is_stdlib(a[1])}
    sections = [_section(group) for group in (future, stdlib, atoms - future - stdlib)]
    return format_python("\n\n".join("\n".join(s) for s in sections if s) + "\n")


def _section(atoms: set[tuple[str, ...]]) -> list[str]:
    """One section's lines: `import x` lines, then `from x import ...` lines, by module."""
    lines = [
        f"import {a[1]}" + (f" as {a[2]}" if a[2] else "")
        for a in sorted((a for a in atoms if a[0] == "import"), key=lambda a: (a[1].lower(), a))
    ]
    modules: dict[str, list[tuple[str, str]]] = {}
    for a in atoms:
        if a[0] == "from":
            modules.setdefault(a[1], []).append((a[2], a[3]))
    for module in sorted(modules, key=lambda m: (m.lower(), m)):
        lines += _from_lines(module, modules[module])
    return lines


def _from_lines(module: str, names: list[tuple[str, str]]) -> list[str]:
    """`from module import a, b` for plain names, one line per aliased name (ruff's default)."""
    plain = sorted((n for n, alias in names if not alias), key=_member_key)
    aliased = sorted((n, alias) for n, alias in names if alias)
    lines = [f"from {module} import {', '.join(plain)}"] if plain else []
    return lines + [f"from {module} import {n} as {alias}" for n, alias in aliased]


# ---------------------------------------------------------------- the recipe: merge


def describe_piece(key: str) -> str:
    """How a conflict names where it is: `in Class.method`, `in the import block`..."""
    special = {
        HEADER: "the module header",
        IMPORTS: "the import block",
        MODULE: "module-level code",
    }
    if key in special:
        return special[key]
    if key.startswith("after "):
        return f"code after {key.removeprefix('after ')}"
    return key.partition("#")[0]


def _piece_nesting(key: str) -> list[str]:
    """The class a method (or the code after it) is in, then the key itself."""
    if key.startswith("<"):
        return [key]
    name = key.removeprefix("after ")
    head, dot, _ = name.partition(".")
    return [head, key] if dot else [key]


def _piece_kind(key: str) -> str:
    if key.startswith("after ") or key.startswith("<"):
        return "code"
    return "method" if "." in key else "definition"


def merge_recipe(
    base: str, ours: str, theirs: str, *, labels: Labels = Labels(), name: str = "recipe"
) -> Merged:
    """Merge the user's recipe (`ours`) with a new generation (`theirs`) over the last one.

    Raises MergeInputError when `ours` (or a recorded text) does not parse.
    """
    if theirs == base or ours == theirs:
        return Merged(ours)
    if ours == base:
        return Merged(theirs)
    split_o = split_recipe(ours, name)
    split_b = split_recipe(base, f"{name} (as generated)")
    split_t = split_recipe(theirs, f"{name} (new generation)")
    renamed_o, renamed_t = class_renames(split_b, split_o), class_renames(split_b, split_t)
    split_o, split_t = split_o.renamed(renamed_o), split_t.renamed(renamed_t)
    # Conflicts name a class as the merged file does: the new name of a renamed class.
    shown = {old: new for new, old in renamed_o.items()} | {
        old: new for new, old in renamed_t.items()
    }

    def describe(key: str) -> str:
        return describe_piece(_renamed_key(key, shown))

    atoms = (split_o.imports | split_t.imports) - (split_b.imports - split_o.imports)
    atoms -= split_b.imports - split_t.imports

    def piece(key: str, b: str, o: str, t: str) -> Merged:
        if key == IMPORTS:
            return Merged(_import_text(atoms, split_o, split_t, o))
        return merge_lines(b, o, t, labels=labels, where=describe(key))

    pieces = merge_keyed(
        split_b.pieces,
        split_o.pieces,
        split_t.pieces,
        labels=labels,
        merge_piece=piece,
        describe=describe,
        kind=_piece_kind,
        nesting=_piece_nesting,
    )
    merged = join_pieces(result for _, result in pieces)
    if not merged.conflicts:
        merged = Merged(_add_missing_imports(merged.text, atoms, name))
    return merged


def _import_text(atoms: frozenset, split_o: Structure, split_t: Structure, ours_text: str) -> str:
    """The merged import block: the user's text or the new generation's when the set is theirs,
    else written afresh (with the blank lines the user had above it)."""
    if atoms == split_o.imports:
        return ours_text
    if atoms == split_t.imports:
        return split_t.pieces[IMPORTS]
    lead = ours_text[: len(ours_text) - len(ours_text.lstrip("\n"))]
    return lead + import_block(atoms)


def complete_imports(text: str, name: str = "recipe") -> str:
    """`text` with the imports tunegen knows added for names it reads but nothing binds (after a
    conflict resolved in favour of code whose import the new generation dropped)."""
    return _add_missing_imports(text, split_recipe(text, name).imports, name)


def _add_missing_imports(text: str, atoms: frozenset, name: str) -> str:
    """Add the imports tunegen knows for names the merged code reads but nothing binds (a user's
    code that used a name only the old generation imported)."""
    try:
        missing = unbound_names(text)
    except Exception:  # noqa: BLE001 - a merged text symtable refuses is left as merged
        return text
    extra = {("import", n, "") for n in missing if n in MODULE_IMPORTS}
    extra |= {("from", FROM_IMPORTS[n], n, "") for n in missing if n in FROM_IMPORTS}
    if not extra:
        return text
    structure = split_recipe(text, name)
    if IMPORTS not in structure.pieces:
        return text
    old = structure.pieces[IMPORTS]
    lead = old[: len(old) - len(old.lstrip("\n"))]
    structure.pieces[IMPORTS] = lead + import_block(atoms | extra)
    return "".join(structure.pieces.values())
