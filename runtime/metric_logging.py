"""Training metrics: one JSON line per logged step in a file, one compact line on stdout.

The JSONL file is appended to, so a resumed run continues the log of the run it resumes, and it is
flushed on every call, so a killed run keeps everything it logged. A run calls `start_at(step)`
before training: records of steps after `step` (logged by a killed run after its last checkpoint,
and about to be trained again) are dropped, and a resume is marked with `{"event": "resume",
"step": N}`, so no step is ever logged twice. Plain JSON lines need no extra dependency and load
with `pandas.read_json(path, lines=True)` or `jq`.

Extra backends (TensorBoard, Weights & Biases, MLflow: `tunegen.runtime.loggers`) receive every
logged record too; they are built from the config as `backends: {name: {_component_: ...}}`.
On a terminal with a live progress line (`tunegen.runtime.progress`), the per-step lines are not
printed: the live line shows the run and the JSONL keeps the record.

`real_token_count` and `throughput` give the tokens/s a step reports: real (non-padding) input
tokens, and the tokens that carry loss where those differ.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .data.collate import IGNORE_INDEX
from .loggers import Backend
from .progress import echo, live_line_shown

__all__ = ["MetricLogger", "real_token_count", "throughput"]


class MetricLogger:
    """Append `{"step": step, **metrics}` to `log_dir/filename` and echo a readable line.

    Metric values may be Python numbers, numpy scalars or 0-dim tensors: ints stay ints, everything
    else is stored as a float. Non-finite floats are written as the strings "NaN", "Infinity" and
    "-Infinity" so every line stays strict JSON (a NaN loss is worth recording, not crashing on).
    """

    def __init__(
        self,
        *,
        log_dir: str | Path,
        filename: str = "metrics.jsonl",
        stdout: bool = True,
        backends: Mapping[str, Backend] | None = None,
    ) -> None:
        self.path = Path(log_dir) / filename
        self.stdout = stdout
        self.backends = dict(backends or {})
        # In a multi-process (torchrun) run only rank 0 keeps the log; the others log nothing.
        self.enabled = int(os.environ.get("RANK", "0")) == 0
        if not self.enabled:
            self.backends, self.stdout = {}, False
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one JSON line for `step` (flushed at once) and print it as a compact line."""
        if "step" in metrics:
            raise ValueError("'step' is passed as the step argument, not as a metric")
        if not self.enabled:
            return
        values = {name: _number(value) for name, value in metrics.items()}
        record = {"step": step, **{name: _json_value(value) for name, value in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        for backend in self.backends.values():
            backend.log(step, values)
        if self.stdout and not live_line_shown():
            parts = [f"step {step:>4}"]
            parts += [f"{name} {_format(value)}" for name, value in values.items()]
            print(" | ".join(parts), flush=True)

    def start_at(self, step: int) -> None:
        """Continue the log at `step` (0: a fresh start): drop records of later steps, rewriting
        the file atomically, and mark a resume (step > 0) with `{"event": "resume", "step": N}`.
        """
        if not self.enabled:
            return
        self._file.close()
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _record_step(line) <= step]
        if len(kept) != len(lines):
            temp = self.path.with_name(f".{self.path.name}.tmp")
            temp.write_text("".join(kept), encoding="utf-8")
            os.replace(temp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if step > 0:
            self._file.write(json.dumps({"event": "resume", "step": step}) + "\n")
            self._file.flush()
        for backend in self.backends.values():
            backend.start_at(step)

    def log_text(self, text: str) -> None:
        """Print a free-form line (e.g. "resumed from step_000030"); it is not written to the JSONL."""
        if self.stdout:
            echo(text)

    def close(self) -> None:
        """Close the file and the backends. Safe to call twice."""
        if not self.enabled:
            return
        self._file.close()
        for backend in self.backends.values():
            backend.close()


def real_token_count(tokens: Tensor, labels: Tensor, *, pad_id: int) -> int:
    """Input tokens of a right-padded batch that are not padding: each row up to its last
    position holding a non-pad token or a label (a final eos equal to the pad id carries loss)."""
    real = (tokens != pad_id) | (labels != IGNORE_INDEX)  # (B, T)
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)  # (T,)
    return int((real * positions).amax(dim=1).sum())


def throughput(*, inputs: int, seconds: float, loss_tokens: int | None = None) -> dict[str, int]:
    """`tokens_per_s` (real input tokens) and, where it differs, `loss_tokens_per_s`."""
    rates = {"tokens_per_s": round(inputs / seconds)}
    if loss_tokens is not None and loss_tokens != inputs:
        rates["loss_tokens_per_s"] = round(loss_tokens / seconds)
    return rates


def _record_step(line: str) -> int:
    """The step of a JSONL line (a metrics record or an event); -1 for anything else (kept)."""
    try:
        record = json.loads(line)
    except ValueError:
        return -1
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else -1


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
