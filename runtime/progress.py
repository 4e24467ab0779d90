"""What a run shows while it trains, and the summary it prints at the end.

On a terminal, `Progress` keeps one live line at the bottom of the screen: a bar with step/total,
epoch, smoothed loss, lr, tokens/s, ETA and memory (RSS on CPU, allocated/reserved on GPU), redrawn
at most a few times a second. When stdout is not a terminal (a pipe, a log file, CI), nothing is
redrawn: the metric logger's plain `step    N | loss ...` lines are the record. Either way
`summary()` closes the run with what it did and where every output went.

Other code prints through `echo()`, so that a line written while the live line is shown lands
above it instead of inside it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import torch

__all__ = [
    "Progress",
    "echo",
    "ema",
    "end_live_line",
    "live_line_shown",
    "memory_usage",
    "run_outputs",
]

MODES = ("auto", "bar", "lines")
SMOOTHING = 0.9  # weight of the past in the smoothed loss (an EMA over ~10 steps)
_REDRAW_SECONDS = 0.1
_BAR_WIDTH = 10
_live: Progress | None = None  # the Progress whose line is on screen, if any


class Progress:
    """Follow a run step by step: a live line on a terminal, totals for the closing summary.

    `mode` is "auto" (a live line when stdout is a terminal and `CI` is unset), "bar" or
    "lines" (no live line). `start_step` is the step a resumed run starts from.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        start_step: int = 0,
        device: torch.device | str = "cpu",
        mode: str = "auto",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.start_step = self.step = start_step
        self.device = torch.device(device)
        self.live = _use_live_line() if mode == "auto" else mode == "bar"
        self.started = self.last_step_at = time.perf_counter()
        self.tokens = 0
        self.last: dict[str, float] = {}
        self.smoothed_loss: float | None = None
        self.best_val: tuple[float, int] | None = None  # (loss, step)
        self.last_val: float | None = None  # the latest validation loss
        self._drawn_at = 0.0
        self._shown = False

    def update(self, step: int, metrics: Mapping[str, float], *, tokens: int = 0) -> None:
        """Record optimizer step `step` (its metrics and real input tokens) and redraw."""
        self.step = step
        self.tokens += tokens
        self.last = {name: float(value) for name, value in metrics.items()}
        loss = self.last.get("loss")
        if loss is not None and math.isfinite(loss):
            self.smoothed_loss = (
                loss
                if self.smoothed_loss is None
                else SMOOTHING * self.smoothed_loss + (1 - SMOOTHING) * loss
            )
        val = self.last.get("val_loss")
        if (
            val is not None
            and math.isfinite(val)
            and (self.best_val is None or val < self.best_val[0])
        ):
            self.best_val = (val, step)
        now = self.last_step_at = time.perf_counter()
        if self.live and (now - self._drawn_at >= _REDRAW_SECONDS or step == self.total_steps):
            self._drawn_at = now
            self._draw()

    def validation(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record the validation metrics measured after step `step` (`val_loss` among them):
        the live line shows the latest, the summary the best."""
        val = float(metrics["val_loss"])
        self.last_val = val
        if math.isfinite(val) and (self.best_val is None or val < self.best_val[0]):
            self.best_val = (val, step)
        if self.live:
            self._draw()

    def line(self, width: int = 200) -> str:
        """The live line's text: bar, step/total, epoch, smoothed loss, lr, tokens/s, ETA and
        memory; the bar is left out when the whole would not fit in `width` columns."""
        done = self.step / self.total_steps if self.total_steps else 1.0
        filled = round(done * _BAR_WIDTH)
        epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        epoch = min(self.step // self.steps_per_epoch + 1, epochs)
        parts = [f"{self.step}/{self.total_steps}", f"ep {epoch}/{epochs}"]
        if self.smoothed_loss is not None:
            parts.append(f"loss {self.smoothed_loss:.4f}")
        if self.last_val is not None:
            parts.append(f"val {self.last_val:.4f}")
        if "lr" in self.last:
            parts.append(f"lr {self.last['lr']:.1e}")
        if "tokens_per_s" in self.last:
            parts.append(f"{self.last['tokens_per_s']:,.0f} tok/s")
        parts.append(f"ETA {_duration(self.eta())}")
        parts.append(memory_usage(self.device).short())
        text = " ".join(parts)
        bar = f"{done:4.0%} [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
        return bar + text if len(bar) + len(text) <= width else text[:width]

    def eta(self) -> float:
        """Seconds left, from the mean time of the steps trained so far in this process."""
        done = self.step - self.start_step
        if done <= 0:
            return 0.0
        return (time.perf_counter() - self.started) / done * (self.total_steps - self.step)

    def summary(self, run_dir: str | Path) -> None:
        """Close the live line and print what the run did and where its outputs are."""
        self.close()
        for text in self.summary_lines(run_dir):
            echo(text)

    def summary_lines(self, run_dir: str | Path) -> list[str]:
        """The closing summary: steps, time, tokens/s, losses, peak memory, outputs."""
        seconds = self.last_step_at - self.started  # training time: up to the last step
        trained = self.step - self.start_step
        resumed = f", resumed at step {self.start_step}" if self.start_step else ""
        rate = f", {self.tokens / seconds:,.0f} tokens/s" if trained and seconds > 0 else ""
        lines = [
            f"done: step {self.step}/{self.total_steps} ({trained} trained in {_duration(seconds)}{resumed}{rate})"
        ]
        if "loss" in self.last:
            smoothed = (
                f" (smoothed {self.smoothed_loss:.4f})" if self.smoothed_loss is not None else ""
            )
            lines.append(f"  final train loss   {self.last['loss']:.4f}{smoothed}")
        best_val = _best_logged_val(Path(run_dir) / "metrics.jsonl", self.best_val)
        if best_val is not None:
            lines.append(f"  best val loss      {best_val[0]:.4f} at step {best_val[1]}")
        lines.append(f"  peak memory        {memory_usage(self.device, peak=True).long()}")
        lines += [f"  {name:<18} {where}" for name, where in run_outputs(Path(run_dir)).items()]
        return lines

    def close(self) -> None:
        """End the live line (the cursor moves below it). Safe to call twice."""
        global _live
        if self._shown:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._shown = False
        if _live is self:
            _live = None

    def _draw(self) -> None:
        global _live
        width = shutil.get_terminal_size((100, 20)).columns - 1
        sys.stdout.write("\r\x1b[2K" + self.line(width))
        sys.stdout.flush()
        self._shown = True
        _live = self

    def _clear(self) -> None:
        sys.stdout.write("\r\x1b[2K")
        sys.stdout.flush()


def echo(text: str, *, file: TextIO | None = None) -> None:
    """Print a line (to stdout, or `file`); with a live progress line on screen, above it."""
    shown = _live
    if shown is not None:
        shown._clear()
    print(text, file=file or sys.stdout, flush=True)
    if shown is not None:
        shown._draw()


def end_live_line() -> None:
    """Leave the live progress line where it is and move below it (before a final message)."""
    if _live is not None:
        _live.close()


def live_line_shown() -> bool:
    """Whether a live progress line is on screen (then per-step log lines are not printed)."""
    return _live is not None


def ema(
    values: list[float], beta: float = SMOOTHING, steps: list[int] | None = None
) -> list[float]:
    """Exponential moving average, started at the first value; non-finite values are skipped.

    `steps` (one per value) are the steps the values were logged at: a value logged N steps
    after the previous one decays the average by beta**N, so a run logged every 25 steps is
    smoothed over the same number of steps as one logged every step.
    """
    out: list[float] = []
    current: float | None = None
    last_step: int | None = None
    for index, value in enumerate(values):
        if math.isfinite(value):
            decay = beta
            if steps is not None and last_step is not None:
                decay = beta ** max(steps[index] - last_step, 1)
            current = value if current is None else decay * current + (1 - decay) * value
            last_step = steps[index] if steps is not None else None
        out.append(current if current is not None else math.nan)
    return out


class MemoryUsage:
    """Process RSS and, on CUDA, allocated/reserved memory in bytes (0 where not known)."""

    def __init__(self, rss: int, allocated: int = 0, reserved: int = 0, cuda: bool = False) -> None:
        self.rss, self.allocated, self.reserved, self.cuda = rss, allocated, reserved, cuda

    def short(self) -> str:
        if self.cuda:
            return f"mem {_gib(self.allocated)}/{_gib(self.reserved)}"
        return f"rss {_gib(self.rss)}"

    def long(self) -> str:
        text = f"{_gib(self.rss)} RSS"
        if self.cuda:
            text += f", {_gib(self.allocated)} allocated, {_gib(self.reserved)} reserved on GPU"
        return text


def memory_usage(device: torch.device | str = "cpu", *, peak: bool = False) -> MemoryUsage:
    """Memory now (or the peak so far): RSS of this process, and CUDA's allocator on a GPU."""
    device = torch.device(device)
    rss = max(_peak_rss(), _current_rss()) if peak else _current_rss()
    if device.type != "cuda":
        return MemoryUsage(rss)
    if peak:
        allocated = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
    else:
        allocated = torch.cuda.memory_allocated(device)
        reserved = torch.cuda.memory_reserved(device)
    return MemoryUsage(rss, allocated, reserved, cuda=True)


def run_outputs(run_dir: Path) -> dict[str, str]:
    """What a run dir holds, named for the summary: checkpoints, metrics, exports, plot command."""
    if not run_dir.is_dir():
        return {}
    entries = sorted(run_dir.iterdir())
    steps = [p for p in entries if p.is_dir() and p.name.startswith("step_")]
    outputs: dict[str, str] = {}
    if steps:
        outputs["checkpoints"] = f"{steps[-1]} (latest of {len(steps)})"
    for path in entries:
        if path in steps or path.name.startswith("."):
            continue
        name = "metrics" if path.name == "metrics.jsonl" else path.name
        if name == "best" and (path / "checkpoint.json").is_file():
            outputs["best checkpoint"] = f"{path}{os.sep} ({_best_of(path)})"
            continue
        outputs[name] = f"{path}{os.sep if path.is_dir() else ''}"
    if (run_dir / "metrics.jsonl").exists():
        outputs["plot"] = f"tunegen plot {run_dir}"
    return outputs


def _best_logged_val(path: Path, best: tuple[float, int] | None) -> tuple[float, int] | None:
    """The lowest `val_loss` (and its step) of `best` and the records of the metrics file at
    `path`, which also holds what a resumed run logged before it was stopped."""
    candidates = [best] if best is not None else []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        value = record.get("val_loss") if isinstance(record, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value) and "step" in record:
            candidates.append((float(value), int(record["step"])))
    # The lowest loss; between equal ones, the earliest step.
    return min(candidates, key=lambda c: (c[0], c[1])) if candidates else None


def _best_of(path: Path) -> str:
    """`step 40, val_loss 1.2345`: what the best checkpoint dir at `path` holds."""
    try:
        marker = json.loads((path / "checkpoint.json").read_text(encoding="utf-8"))
        return f"step {marker['step']}, val_loss {marker['val_loss']:.4f}"
    except (OSError, ValueError, KeyError, TypeError):
        return "the lowest validation loss"


def _use_live_line() -> bool:
    """A live line only on an interactive terminal, never in CI or on a dumb terminal."""
    return sys.stdout.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


def _current_rss() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return _peak_rss()
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _duration(seconds: float) -> str:
    """m:ss under an hour, h:mm:ss above."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    if hours == 0:
        return f"{rest // 60}:{rest % 60:02d}"
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
