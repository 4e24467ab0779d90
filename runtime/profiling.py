"""A step-scheduled PyTorch profiler whose results land in the run directory.

The recipe calls `step()` once per optimizer step and `stop()` at the end. After `wait_steps`
idle and `warmup_steps` warm-up steps, `active_steps` steps are recorded; then the Chrome trace
(`trace.json`, open it in chrome://tracing or Perfetto) and a table of the most expensive
operators (`key_averages.txt`) are written to `output_dir`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from .errors import out_of_bounds

__all__ = ["Profiler"]


class Profiler:
    """Records `active_steps` optimizer steps after `wait_steps` + `warmup_steps`."""

    def __init__(
        self,
        *,
        output_dir: str | Path,
        wait_steps: int = 1,
        warmup_steps: int = 1,
        active_steps: int = 3,
        profile_memory: bool = True,
        with_stack: bool = False,
    ) -> None:
        # The spec's rules and wording (the pre-flight checks them first), for direct callers.
        for name, value, least in (
            ("wait_steps", wait_steps, 0),
            ("warmup_steps", warmup_steps, 0),
            ("active_steps", active_steps, 1),
        ):
            problem = out_of_bounds(value, ge=least)
            if problem is not None:
                raise ValueError(f"profiler: {name}: {problem}")
        self.output_dir = Path(output_dir)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._profile = profile(
            activities=activities,
            schedule=schedule(wait=wait_steps, warmup=warmup_steps, active=active_steps, repeat=1),
            on_trace_ready=self._write,
            record_shapes=True,
            profile_memory=profile_memory,
            with_stack=with_stack,
        )
        self._profile.start()
        self._stopped = False

    def step(self) -> None:
        """Mark the end of an optimizer step."""
        self._profile.step()

    def stop(self) -> None:
        """Stop profiling (writes the results if the active window was reached)."""
        if not self._stopped:
            self._stopped = True
            self._profile.stop()

    def _write(self, prof: profile) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.output_dir / "trace.json"))
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=30)
        (self.output_dir / "key_averages.txt").write_text(table + "\n", encoding="utf-8")
