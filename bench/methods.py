"""Steps per second and peak memory of every method's built-in spec on the tiny model.

    .venv/bin/python bench/methods.py [--steps 60] [--methods full lora dora qlora dpo kd]

Each built-in spec (`specs/<method>.yaml`, as shipped: its adapter targets and data; the batch size
set to 8 for all) is compiled into a scratch copy of `specs/` and its recipe run twice, for a few steps and
for `--steps` steps; the difference of the two wall times gives the training speed without
start-up and export. Peak memory is the recipe process's maximum resident set size (CPU) from
`wait4`. The demo's trained model, which the dpo and kd specs start from, is stood in for by a
random tiny model of the same size. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("full", "lora", "dora", "qlora", "dpo", "kd")
WARM_STEPS = 10
BATCH_SIZE = 8  # the same for every method (dpo: 8 pairs, so 16 rows, plus the reference pass)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps of the long run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    return parser.parse_args()


def run(scratch: Path, method: str, steps: int) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one recipe run of `steps` steps."""
    argv = [
        *(sys.executable, f"generated/{method}.py", "--config", f"generated/{method}.yaml"),
        *(f"training.max_steps={steps}", "training.warmup_steps=0", "logging.every_n_steps=1000"),
        *(f"training.batch_size={BATCH_SIZE}", "training.grad_accum=1"),
        f"checkpointer.output_dir=runs/{method}_{steps}",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=scratch, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{method}: the recipe failed (exit {os.waitstatus_to_exitcode(status)})")
    return elapsed, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tunegen-methods-"))
    shutil.copytree(REPO / "specs", scratch / "specs")
    from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
    from tunegen.runtime.models import tiny
    from tunegen.runtime.tokenizers import builtin_tokenizer

    torch.manual_seed(0)
    save_hf_checkpoint(
        tiny(), scratch / "runs" / "demo" / "hf_model", tokenizer=builtin_tokenizer("tiny")
    )
    rows = []
    for method in args.methods:
        subprocess.run(
            [sys.executable, "-m", "tunegen.compiler", "new", "--spec", f"specs/{method}.yaml"],
            cwd=scratch,
            check=True,
            capture_output=True,
        )
        short, _ = run(scratch, method, WARM_STEPS)
        long, peak = run(scratch, method, args.steps)
        steps_per_s = (args.steps - WARM_STEPS) / (long - short)
        rows.append((method, steps_per_s, peak))
        print(f"{method}: {steps_per_s:.2f} steps/s, peak RSS {peak / 2**20:.0f} MiB", flush=True)
    print("\n| method | steps/s | peak RSS (MiB) |\n|---|---|---|")
    for method, steps_per_s, peak in rows:
        print(f"| {method} | {steps_per_s:.2f} | {peak / 2**20:.0f} |")
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
