"""Three-way merge of a generated config by key, keeping every comment the user wrote.

The config is cut into entries keyed by their dotted key path (`training.lr`): an entry is the key's
line, the comment and blank lines above it, and the lines that continue its value (a block list).
Entries are merged by `merge.merge_keyed`: a key the user changed keeps the user's value, a key the
new spec adds or changes follows the spec, and a key both changed differently is a conflict with
git's markers. On a key line the value and the trailing comment are merged separately, so a user's
new value survives a reworded comment. A key the new spec removes goes even if the user changed
its value (the recipe no longer reads it); the merge reports it as a note.

A line parser rather than a YAML library: comments are data here, and the configs tunegen writes
are block mappings, one key per line. Anything else (flow mappings, lists) rides along as the
value text of its key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunegen.compiler.merge import (
    END,
    Conflict,
    Labels,
    Merged,
    conflict_block,
    join_pieces,
    merge_keyed,
    merge_lines,
)

__all__ = ["ConfigMerged", "merge_config", "split_config"]

# `  key: value  # comment`: indentation, key, the rest of the line.
DEFAULT_LABELS = Labels()
_KEY_LINE = re.compile(r"^( *)([A-Za-z_][\w.-]*|\"[^\"]*\"|'[^']*'):(?=\s|$)(.*?)(\n?)$")


@dataclass(frozen=True)
class ConfigMerged(Merged):
    """A merged config, and notes on keys the new spec removed although the user changed them."""

    notes: tuple[str, ...] = ()


def split_config(text: str) -> dict[str, str]:
    """Entries of a config by key path, in file order; their texts join to `text`."""
    entries: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []  # comment and blank lines: they belong to the next key
    current: str | None = None
    for line in text.splitlines(keepends=True):
        match = _KEY_LINE.match(line)
        stripped = line.strip()
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            current = ".".join(key for _, key in stack)
            entries[current] = "".join(pending) + line
            pending = []
        elif not stripped or stripped.startswith("#") or current is None:
            pending.append(line)
        else:  # a value's continuation (a block list item, a folded scalar)
            entries[current] += "".join(pending) + line
            pending = []
    if pending:
        entries[END] = "".join(pending)
    return entries


def merge_config(
    base: str, ours: str, theirs: str, *, labels: Labels = DEFAULT_LABELS, name: str = "config"
) -> ConfigMerged:
    """Merge the user's config (`ours`) with a new generation (`theirs`) over the last one."""
    if theirs == base or ours == theirs:
        return ConfigMerged(ours)
    if ours == base:
        return ConfigMerged(theirs)
    split_b, split_o, split_t = split_config(base), split_config(ours), split_config(theirs)

    def piece(key: str, b: str, o: str, t: str) -> Merged:
        return _merge_entry(key, b, o, t, labels)

    kept_o = dict(split_o)
    notes = []
    for key in list(kept_o):  # removed by the spec: goes, with a note if the user changed it
        if key in split_b and key not in split_t:
            if kept_o[key] != split_b[key] and key != END:
                notes.append(f"{key}: the new spec removes this key (you had changed it)")
            kept_o[key] = split_b[key]
    pieces = merge_keyed(
        split_b, kept_o, split_t, labels=labels, merge_piece=piece, kind=lambda _: "key"
    )
    orphans = _orphans([key for key, _ in pieces], split_b, split_o)
    merged = join_pieces(
        _orphan_conflict(result, key, labels) if key in orphans else result
        for key, result in pieces
    )
    return ConfigMerged(merged.text, merged.conflicts, tuple(notes))


def _orphans(keys: list[str], base: dict[str, str], ours: dict[str, str]) -> set[str]:
    """Keys the user added under a section that the merged config no longer has."""
    present = set(keys)
    return {
        key
        for key in keys
        if key in ours and key not in base and "." in key and key.rpartition(".")[0] not in present
    }


def _orphan_conflict(result: Merged, key: str, labels: Labels) -> Merged:
    lines = conflict_block([], result.text.splitlines(keepends=True), [], labels)
    what = f"you added this key under {key.rpartition('.')[0]}, which the new spec removes"
    return Merged("".join(lines), (Conflict(1, key, what),))


def _merge_entry(key: str, base: str, ours: str, theirs: str, labels: Labels) -> Merged:
    """Merge one entry: comments above and continuation lines by line, the key line's value and
    its comment each on their own."""
    parts = [_entry_parts(text) for text in (base, ours, theirs)]
    if any(p is None for p in parts):
        return merge_lines(base, ours, theirs, labels=labels, where=key)
    (b_above, b_line, b_after), (o_above, o_line, o_after), (t_above, t_line, t_after) = parts
    above = merge_lines(b_above, o_above, t_above, labels=labels, where=key)
    line = _merge_key_line(b_line, o_line, t_line)
    if line is None:
        what = f"you set {_value(o_line)}, the new spec sets {_value(t_line)}"
        rest = merge_lines(
            b_line + b_after,
            o_line + o_after,
            t_line + t_after,
            labels=labels,
            where=key,
            what=what,
        )
        return join_pieces([above, rest])
    after = merge_lines(b_after, o_after, t_after, labels=labels, where=key)
    return join_pieces([above, Merged(line), after])


def _entry_parts(text: str) -> tuple[str, str, str] | None:
    """(comment lines above, the key line, continuation lines) of an entry."""
    lines = text.splitlines(keepends=True)
    index = next((i for i, line in enumerate(lines) if _KEY_LINE.match(line)), None)
    if index is None:
        return None
    return "".join(lines[:index]), lines[index], "".join(lines[index + 1 :])


def _merge_key_line(base: str, ours: str, theirs: str) -> str | None:
    """The merged key line, or None when both sides changed its value differently."""
    b, o, t = (_split_line(x) for x in (base, ours, theirs))
    merged = []
    for part_b, part_o, part_t in zip(b, o, t, strict=True):
        if part_o == part_t or part_t == part_b:
            merged.append(part_o)
        elif part_o == part_b:
            merged.append(part_t)
        else:
            return None
    return "".join(merged)


def _split_line(line: str) -> tuple[str, str, str]:
    """(`  key:`, ` value`, `  # comment` with the newline) of a key line."""
    match = _KEY_LINE.match(line)
    assert match is not None
    head = f"{match.group(1)}{match.group(2)}:"
    rest = match.group(3)
    cut = _comment_start(rest)
    value = rest[:cut].rstrip() if cut is not None else rest
    return head, value, rest[len(value) :] + match.group(4)


def _comment_start(rest: str) -> int | None:
    """Index of the `#` that starts a comment in a value (not one inside quotes)."""
    quote = ""
    for i, char in enumerate(rest):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1] in " \t"):
            return i
    return None


def _value(line: str) -> str:
    return _split_line(line)[1].strip()
