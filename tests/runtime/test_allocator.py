"""The allocator setting `run_main` makes: freed memory is reused, not faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting is glibc's",
)

# Eight 8 MiB tensors allocated, filled and freed per "step", as a training step does with its
# activations; the page faults of ten steps after two warm-up steps.
STEPS = """
import json, resource, sys, torch
from tunegen.runtime.allocator import keep_freed_memory

kept = keep_freed_memory() if sys.argv[1] == "keep" else None

def step():
    tensors = [torch.ones(2 * 2**20) for _ in range(8)]
    del tensors

step(), step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"kept": kept, "faults_per_step": faults}))
"""


def run_steps(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


@glibc_only
def test_freed_memory_is_reused_without_page_faults() -> None:
    kept = run_steps("keep")
    assert kept["kept"] is True
    # 64 MiB allocated per step is 16384 pages. glibc's defaults fault almost all of them in
    # again every step (16147 measured); kept, the heap serves them again (0-205 measured).
    assert kept["faults_per_step"] < 16384 / 20, kept


@glibc_only
def test_the_users_own_malloc_settings_win() -> None:
    assert run_steps("keep", MALLOC_TRIM_THRESHOLD_="0")["kept"] is False


def test_off_glibc_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegen.runtime import allocator

    monkeypatch.setattr(allocator.platform, "system", lambda: "Darwin")
    assert allocator.keep_freed_memory() is False


def test_run_main_sets_it_before_the_recipe_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegen.runtime import launch

    calls: list[str] = []
    monkeypatch.setattr(launch, "keep_freed_memory", lambda: calls.append("allocator") or True)
    with pytest.raises(SystemExit) as exit_:
        launch.run_main(lambda argv: calls.append("recipe"), [])
    assert exit_.value.code == 0
    assert calls == ["allocator", "recipe"]
