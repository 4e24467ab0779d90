"""Training metrics: one JSON line per logged step in a file, one compact line on stdout.

The JSONL file is appended to (never truncated), so a resumed run continues the log of the run it
resumes, and it is flushed on every call, so a killed run keeps everything it logged. Plain JSON
lines need no extra dependency and load with `pandas.read_json(path, lines=True)` or `jq`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MetricLogger"]


class MetricLogger:
    """Append `{"step": step, **metrics}` to `log_dir/filename` and echo a readable line.

    Metric values may be Python numbers, numpy scalars or 0-dim tensors: ints stay ints, everything
    else is stored as a float. Non-finite floats are written as the strings "NaN", "Infinity" and
    "-Infinity" so every line stays strict JSON (a NaN loss is worth recording, not crashing on).
    """

    def __init__(
        self, *, log_dir: str | Path, filename: str = "metrics.jsonl", stdout: bool = True
    ) -> None:
        self.path = Path(log_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stdout = stdout
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one JSON line for `step` (flushed at once) and print it as a compact line."""
        if "step" in metrics:
            raise ValueError("'step' is passed as the step argument, not as a metric")
        values = {name: _number(value) for name, value in metrics.items()}
        record = {"step": step, **{name: _json_value(value) for name, value in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self.stdout:
            parts = [f"step {step:>4}"]
            parts += [f"{name} {_format(value)}" for name, value in values.items()]
            print(" | ".join(parts), flush=True)

    def log_text(self, text: str) -> None:
        """Print a free-form line (e.g. "resumed from step_000030"); it is not written to the JSONL."""
        if self.stdout:
            print(text, flush=True)

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        self._file.close()


def _number(value: object) -> float:
    """Python int for integers (not bools), float for anything else float() accepts."""
    if hasattr(value, "item"):  # 0-dim tensor or numpy scalar: keep its int-ness
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return float(value)  # type: ignore[arg-type]


def _json_value(value: float) -> float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _format(value: float) -> str:
    """Short human form: 1,234 for ints and large floats, 2.3456 for ordinary ones, 3.0e-04 for tiny."""
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude == 0.0:
        return "0"
    if magnitude < 1e-2:
        return f"{value:.1e}"
    if magnitude < 1e3:
        return f"{value:.4f}"
    return f"{value:,.0f}"
