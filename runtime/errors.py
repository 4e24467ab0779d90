"""User-facing errors.

Every problem a user can fix (a bad spec, config, data file, checkpoint or tokenizer) is raised as a
`TunegenError`. Its message is one line that says what is wrong and where (file:line, or a key path).
The CLI and generated recipes print that line and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "SpecError",
    "TokenizerError",
    "TunegenError",
]


class TunegenError(Exception):
    """A problem in the user's input, reported as one line without a traceback."""


class SpecError(TunegenError):
    """The spec YAML is malformed or invalid."""


class ConfigError(TunegenError):
    """The generated config (or an override of it) is malformed or invalid."""


class DataError(TunegenError):
    """A data file is missing, unreadable, or has a bad record."""


class CheckpointError(TunegenError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


class TokenizerError(TunegenError):
    """A tokenizer file is missing or corrupt."""
