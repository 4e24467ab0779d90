"""Soak test: a long run, killed with SIGKILL at random moments and resumed each time, must end
with exactly the weights of the same run left alone.

    .venv/bin/python bench/soak_resume.py --steps 2000 --save-every 50 --kills 20

It compiles a LoRA spec for the built-in tiny model into a scratch dir, trains it once without
interruption, then trains it again under fire: after each kill it resumes with
`training.resume=auto` from the last complete checkpoint. It reports the kills (the step each
landed after, and whether a save was in flight), checks that every logged loss equals the
reference run's at that step, and compares the final adapter weights bit for bit. Not part of the
test suite (it runs for many minutes); `tests/test_kill_and_resume.py` is its short version.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SPEC = """\
name: soak
method: {method}
model: tiny
data: {{path: data/demo_train.jsonl, max_seq_len: 64}}
{lora}training: {{epochs: 100, max_steps: {steps}, batch_size: 8, lr: 1.0e-3, warmup_steps: 20, seed: 1}}
checkpoint: {{output_dir: runs/soak, save_every_n_steps: {save_every}, keep_last: 3}}
logging: {{every_n_steps: 1}}
"""


LORA = "lora: {rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj]}\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint interval")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run may end")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument(
        "--method",
        choices=("lora", "full"),
        default="lora",
        help="full saves the whole model and optimizer state: longer saves, more kills land in one",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir")
    return parser.parse_args()


def recipe_command(run_dir: str, *extra: str) -> list[str]:
    return [
        *(sys.executable, "generated/soak.py", "--config", "generated/soak.yaml"),
        *(f"checkpointer.output_dir={run_dir}", *extra),
    ]


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def latest_step(run_dir: Path) -> int:
    steps = [int(p.name[5:]) for p in run_dir.glob("step_*") if (p / "checkpoint.json").exists()]
    return max(steps, default=0)


def main() -> int:
    args = parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="tunegen-soak-"))
    shutil.copytree(REPO / "specs" / "data", scratch / "data")
    lora = LORA if args.method == "lora" else ""
    spec = SPEC.format(method=args.method, lora=lora, steps=args.steps, save_every=args.save_every)
    (scratch / "soak.yaml").write_text(spec)
    subprocess.run(
        [sys.executable, "-m", "tunegen.compiler", "new", "--spec", "soak.yaml"],
        cwd=scratch,
        check=True,
        capture_output=True,
    )

    start = time.perf_counter()
    subprocess.run(recipe_command("runs/reference"), cwd=scratch, check=True, capture_output=True)
    reference_s = time.perf_counter() - start
    step_s = reference_s / args.steps
    print(f"reference run: {args.steps} steps in {reference_s:.0f} s")

    kills, attempt = [], 0
    while True:
        extra = ["training.resume=auto"] if attempt else []
        process = subprocess.Popen(
            recipe_command("runs/soak", *extra),
            cwd=scratch,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        attempt += 1
        if len(kills) < args.kills:
            # Anywhere in the next few checkpoint intervals, startup included.
            time.sleep(rng.uniform(2.0, 2.0 + 3 * args.save_every * step_s))
            if process.poll() is None:
                saving = any((scratch / "runs/soak").glob(".tmp-*"))
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills.append((latest_step(scratch / "runs/soak"), saving))
                continue
        if process.wait() != 0:
            print(process.stderr.read(), file=sys.stderr)
            return 1
        break

    expected = dict(logged_losses(scratch / "runs/reference"))
    logged = logged_losses(scratch / "runs/soak")
    mismatched = [(step, loss) for step, loss in logged if expected.get(step) != loss]
    weights = "adapter.safetensors" if args.method == "lora" else "model.safetensors"
    final = f"step_{args.steps:06d}/{weights}"
    a = load_file(scratch / "runs/reference" / final)
    b = load_file(scratch / "runs/soak" / final)
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    print(f"kills: {len(kills)} (last complete checkpoint at each: {[s for s, _ in kills]})")
    print(f"kills that landed while a save was in flight: {sum(saving for _, saving in kills)}")
    print(
        f"logged steps (replays included): {len(logged)}; losses unlike the reference: "
        f"{len(mismatched)}"
    )
    print(f"final weights bit-identical to the uninterrupted run: {identical}")
    if args.keep:
        print(f"scratch dir: {scratch}")
    else:
        shutil.rmtree(scratch)
    return 0 if identical and not mismatched else 1


if __name__ == "__main__":
    sys.exit(main())
