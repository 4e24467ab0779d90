"""Read data files of JSON records, keeping each record's line number for error messages.

Two formats: `.jsonl` (one JSON object per line, blank lines skipped) and `.json` (one list of
objects). Every problem is located as `path:line: reason`. A file's bad records are all reported
together, not only the first: `RecordErrors` collects them and raises one `DataError` of up to
`MAX_LISTED` such lines, then `... and N more`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from tunegen.runtime.errors import DataError

__all__ = [
    "MAX_LISTED",
    "NumberedRecord",
    "RecordErrors",
    "json_type_name",
    "located_list",
    "read_numbered_records",
    "read_records",
    "require_fields",
]


MAX_LISTED = 20
"""How many located problems one error lists before `... and N more`."""


def located_list(lines: list[str], *, limit: int = MAX_LISTED) -> str:
    """`lines`, one per line, the first `limit` of them, then `... and N more` for the rest."""
    shown = lines[:limit]
    if len(lines) > limit:
        shown.append(f"... and {len(lines) - limit:,} more")
    return "\n".join(shown)


class RecordErrors:
    """The bad records of a data file, collected while reading it so that all are reported.

    Reading goes on past a bad record; `raise_if_any()` at the end raises one `DataError` that
    lists them (a single bad record is still a one-line error).
    """

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def add(self, line: int, error: DataError) -> None:
        """Record the problem of the record at `line` (`DataError("path:line: reason")`)."""
        self.found.append((line, str(error)))

    def __len__(self) -> int:
        return len(self.found)

    def raise_if_any(self) -> None:
        """One `DataError` listing every problem in file order (found in several passes)."""
        if self.found:
            ordered = sorted(self.found, key=lambda found: found[0])
            raise DataError(located_list([message for _, message in ordered]))


class NumberedRecord(NamedTuple):
    """A record and the 1-based line of the file where it starts."""

    line: int
    record: dict[str, Any]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `.jsonl` or `.json` file, in file order."""
    return [r.record for r in read_numbered_records(path)]


def read_numbered_records(
    path: str | Path, *, errors: RecordErrors | None = None
) -> list[NumberedRecord]:
    """All records of a `.jsonl` or `.json` file, each with its line number.

    A line that is not JSON or not an object is skipped and added to `errors`; without `errors`,
    all such lines are raised together at the end. Problems with the whole file (missing, not
    UTF-8, not a list, no records) raise at once.
    """
    own = errors is None
    errors = RecordErrors() if errors is None else errors
    name = os.fspath(path)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"data file '{name}' must end in .jsonl or .json")
    if not path.is_file():
        raise DataError(f"data file '{name}' not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8") from e
    if suffix == ".jsonl":
        records = _parse_jsonl(text, name, errors)
    else:
        records = _parse_json_list(text, name, errors)
    if own:
        errors.raise_if_any()
    if not records and not errors:
        raise DataError(f"data file '{name}' has no records")
    return records


def _parse_jsonl(text: str, name: str, errors: RecordErrors) -> list[NumberedRecord]:
    records = []
    # Split on "\n" only: str.splitlines() would also split inside strings holding U+2028 etc.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(_as_record(_json_line(line, name, line_no), name, line_no))
        except DataError as e:
            errors.add(line_no, e)
    return records


def _json_line(line: str, name: str, line_no: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}:{line_no}: not valid JSON ({e.msg})") from e


def _parse_json_list(text: str, name: str, errors: RecordErrors) -> list[NumberedRecord]:
    """Parse `[obj, obj, ...]` one element at a time, so each record knows its line."""
    decoder = json.JSONDecoder()

    def fail(message: str, pos: int) -> DataError:
        return DataError(f"{name}:{_line_at(text, pos)}: {message}")

    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        raise fail("a .json data file must hold a list of records", pos)
    pos = _skip_space(text, pos + 1)
    records: list[NumberedRecord] = []
    first = True
    while not text.startswith("]", pos):
        if not first:
            if not text.startswith(",", pos):
                raise fail("not valid JSON (Expecting ',' delimiter)", pos)
            pos = _skip_space(text, pos + 1)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(f"not valid JSON ({e.msg})", e.pos) from e
        first = False
        line = _line_at(text, pos)
        try:
            records.append(_as_record(value, name, line))
        except DataError as e:  # a value that is not an object; the list itself goes on
            errors.add(line, e)
        pos = _skip_space(text, end)
    if text[pos + 1 :].strip():
        raise fail("not valid JSON (Extra data)", _skip_space(text, pos + 1))
    return records


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _as_record(value: Any, name: str, line: int) -> NumberedRecord:
    if not isinstance(value, dict):
        raise DataError(
            f"{name}:{line}: a record must be a JSON object, got {json_type_name(value)}"
        )
    return NumberedRecord(line, value)


def require_fields(
    record: Mapping[str, Any],
    fields: Iterable[str],
    *,
    path: str | Path,
    line: int,
    optional: Iterable[str] = (),
) -> None:
    """Check that `record` has every field in `fields` as a string.

    Fields in `optional` may be missing or null, but must be strings when present.
    """
    name = os.fspath(path)
    for field in fields:
        if field not in record:
            raise DataError(f"{name}:{line}: missing field '{field}'")
        _check_str(record, field, name, line)
    for field in optional:
        if record.get(field) is not None:
            _check_str(record, field, name, line)


def _check_str(record: Mapping[str, Any], field: str, name: str, line: int) -> None:
    value = record[field]
    if not isinstance(value, str):
        raise DataError(
            f"{name}:{line}: field '{field}' must be a string, got {json_type_name(value)}"
        )


def json_type_name(value: Any) -> str:
    """JSON's name for the type of a parsed value ("object", "array", "null", ...).

    Error messages about a record's fields name the type as the user wrote it in the file,
    not as Python parsed it.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
