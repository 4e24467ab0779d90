"""Distributed (FSDP2) recipes on CPU with gloo: 2 processes train as one process does.

Every run is the tiny model on the demo data. A distributed run with `batch_size: 2` on 2
processes trains the same global batch as a single-device run with `batch_size: 4`, so their
losses must agree step for step (1e-5): full fine-tune and LoRA, with and without gradient
accumulation (the demo records have different lengths, so the two ranks' micro-batches are
padded to different lengths). Also: a run killed after a checkpoint resumes to the same losses,
the consolidated export holds exactly the trained weights, a 2-"node" run on localhost (two
launchers, c10d rendezvous on 127.0.0.1) matches, and the launches that cannot work are refused
in one line. The distributed runs are subprocesses (`tunegen run` starts torchrun's launcher).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SPECS, TUNEGEN, losses, tunegen_in_process

pytestmark = pytest.mark.slow

STEPS = 5
BASE = {
    "model": "tiny",
    "data": {"path": "data/demo_train.jsonl", "max_seq_len": 64},
    "checkpoint": {"export_hf": True},
}


def _spec(
    name: str, method: str, *, batch_size: int, grad_accum: int, distributed: bool, **training
) -> dict:
    spec = {
        "name": name,
        "method": method,
        **BASE,
        "training": {
            "max_steps": STEPS,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "lr": 2e-3,
            "warmup_steps": 0,
            "device": "cpu",
            **training,
        },
    }
    if method == "lora":
        spec["lora"] = {"dropout": 0.0}  # ranks draw other dropout masks than one process
    if distributed:
        spec["distributed"] = {"nproc_per_node": 2}
    return spec


CASES = {  # name -> (method, grad_accum, more training settings)
    "full": ("full", 1, {}),
    "full_accum": ("full", 2, {}),
    "lora": ("lora", 1, {}),
    "lora_accum": ("lora", 2, {"activation_checkpointing": True}),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working dir with the demo data and, per case, a distributed recipe `<case>_dist` and
    its single-device twin `<case>_single` (twice the batch size)."""
    root = tmp_path_factory.mktemp("distributed")
    shutil.copytree(SPECS / "data", root / "data")
    for case, (method, accum, training) in CASES.items():
        for suffix, batch_size, distributed in (("dist", 2, True), ("single", 4, False)):
            name = f"{case}_{suffix}"
            spec = _spec(
                name,
                method,
                batch_size=batch_size,
                grad_accum=accum,
                distributed=distributed,
                **training,
            )
            (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
            result = tunegen_in_process("new", "--spec", f"{name}.yaml", cwd=root)
            assert result.returncode == 0, result.stderr
    return root


def _run(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1"}
    return subprocess.run(
        [*TUNEGEN, "run", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _trained(project: Path, name: str, *overrides: str) -> dict[int, float]:
    """Run recipe `name` (distributed through `tunegen run`, single in-process); its losses."""
    if name.endswith("_dist"):
        result = _run(project, f"generated/{name}.py", *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        result = tunegen_in_process("run", f"generated/{name}.py", *overrides, cwd=project)
        assert result.returncode == 0, result.stderr[-3000:]
    return losses(project / "runs" / name / "metrics.jsonl")


def _assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)


class _SingleRuns(dict):
    """case -> losses of its single-device twin, each trained once, when first asked for."""

    def __init__(self, project: Path) -> None:
        super().__init__()
        self.project = project

    def __missing__(self, case: str) -> dict[int, float]:
        self[case] = _trained(self.project, f"{case}_single")
        return self[case]


@pytest.fixture(scope="module")
def single_losses(project: Path) -> dict[str, dict[int, float]]:
    return _SingleRuns(project)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_train_as_one_with_the_same_global_batch(
    case: str, project: Path, single_losses: dict
) -> None:
    _assert_same_losses(_trained(project, f"{case}_dist"), single_losses[case])


def test_the_two_ranks_pad_their_batches_to_different_lengths(project: Path) -> None:
    """The equality above covers uneven lengths: the ranks' micro-batches differ in length."""
    from tunegen.runtime.config import instantiate, load_config
    from tunegen.runtime.data import ShardedSampler

    cfg = load_config(project / "generated" / "full_dist.yaml")
    dataset = instantiate(cfg.dataset, tokenizer=instantiate(cfg.tokenizer))
    longest = []
    for rank in (0, 1):
        sampler = ShardedSampler(len(dataset), rank=rank, world_size=2, seed=0)
        order = list(sampler)[: 2 * STEPS]
        batches = [order[k : k + 2] for k in range(0, len(order), 2)]
        longest.append([max(len(dataset[i]["tokens"]) for i in batch) for batch in batches])
    assert longest[0] != longest[1]


def test_the_export_holds_exactly_the_trained_weights(project: Path, single_losses: dict) -> None:
    """hf_model/ (gathered and written by rank 0) equals the final sharded checkpoint, and
    loads on one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from tunegen.runtime import load_model
    from tunegen.runtime.models import tiny

    run = project / "runs" / "full_dist"
    if not (run / "hf_model").is_dir():
        _trained(project, "full_dist")
    dcp_to_torch_save(run / f"step_{STEPS:06d}", project / "consolidated.pt")
    state = torch.load(project / "consolidated.pt", weights_only=True)
    from_checkpoint = tiny()
    from_checkpoint.load_state_dict(state["weights"])
    exported = load_model(run / "hf_model")
    tokens = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(tokens), from_checkpoint(tokens))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_losses(
    project: Path, single_losses: dict
) -> None:
    """SIGKILL the launcher and both workers once step 2 is saved; resume=auto finishes the
    run with the losses of one uninterrupted single process. A resume on another number of
    processes is refused in one line."""
    name, out = "full_accum_dist", "runs/killed"
    command = [*TUNEGEN, "run", f"generated/{name}.py"]
    overrides = [f"checkpointer.output_dir={out}", "training.save_every_n_steps=2"]
    launcher = subprocess.Popen(
        [*command, *overrides],
        cwd=project,
        env={**os.environ, "CI": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = project / out / "step_000002" / "checkpoint.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(launcher.pid)
    for pid in [*workers, launcher.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()
    for pid in workers:  # started in their own sessions: wait until they are gone
        while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
            time.sleep(0.05)
    assert marker.exists()
    assert not (project / out / f"step_{STEPS:06d}").exists(), "the run finished before the kill"

    resumed = _run(project, f"generated/{name}.py", *overrides, "training.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_losses(losses(project / out / "metrics.jsonl"), single_losses["full_accum"])

    other = _run(
        project,
        f"generated/{name}.py",
        "--nproc-per-node",
        "1",
        *overrides,
        "training.resume=auto",
        f"training.max_steps={STEPS + 2}",
    )
    assert other.returncode == 2
    errors = [line for line in other.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "written by 2 processes and this run has 1" in errors[0], (
        other.stderr
    )


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_localhost_train_as_one_process(project: Path, single_losses: dict) -> None:
    """Two launchers (node_rank 0 and 1, one process each) meet at a c10d rendezvous."""
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = [
        subprocess.Popen(
            [
                *TUNEGEN,
                "run",
                "generated/full_dist.py",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node_rank),
                "--rdzv-endpoint",
                endpoint,
                "checkpointer.output_dir=runs/two_nodes",
            ],
            cwd=project,
            env={**os.environ, "CI": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node_rank in (0, 1)
    ]
    for launcher in launchers:
        _, err = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, err[-3000:]
    _assert_same_losses(losses(project / "runs/two_nodes/metrics.jsonl"), single_losses["full"])


def test_torchrun_on_a_single_device_recipe_refuses_in_one_line(project: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "generated/full_single.py",
            "--config",
            "generated/full_single.yaml",
            "checkpointer.output_dir=runs/refused",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: full_single.py is a single-device recipe but was launched as 2 processes"
        " (WORLD_SIZE); run it as one process, or add a distributed: section to its spec and"
        " regenerate it"
    ], result.stderr
    assert not (project / "runs/refused").exists()


def test_the_lora_export_loads_on_one_process_with_the_trained_adapters(
    project: Path, single_losses: dict
) -> None:
    """peft_adapter/ (rank 0) on its base gives the logits of the final sharded checkpoint's
    adapters on the same base."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from tunegen.runtime import load_model
    from tunegen.runtime.lora import apply_lora
    from tunegen.runtime.peft_export import load_peft_adapter

    run = project / "runs" / "lora_dist"
    if not (run / "peft_adapter").is_dir():
        _trained(project, "lora_dist")
    dcp_to_torch_save(run / f"step_{STEPS:06d}", project / "lora.pt")
    adapters = torch.load(project / "lora.pt", weights_only=True)["weights"]
    cfg = yaml.safe_load((project / "generated" / "lora_dist.yaml").read_text())["lora"]
    from_checkpoint = load_model(run / "peft_adapter" / "base_model")
    apply_lora(from_checkpoint, targets=cfg["targets"], rank=cfg["rank"], alpha=cfg["alpha"])
    from_checkpoint.load_state_dict(adapters, strict=False)
    exported = load_model(run / "peft_adapter" / "base_model")
    load_peft_adapter(exported, run / "peft_adapter")
    tokens = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens), from_checkpoint(tokens), rtol=0, atol=1e-6)


def test_sigterm_to_the_launcher_saves_on_every_rank_and_resumes(
    project: Path, single_losses: dict
) -> None:
    """torchrun passes SIGTERM on to both processes; they agree to stop after the same step,
    save it together, and `tunegen run` exits 143; resume=auto finishes with the same losses."""
    name, out = "full_dist", "runs/sigterm"
    command = [*TUNEGEN, "run", f"generated/{name}.py", f"checkpointer.output_dir={out}"]
    launcher = subprocess.Popen(
        command,
        cwd=project,
        env={**os.environ, "CI": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = project / out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and losses(metrics)) and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, err[-3000:]
    saved = sorted(path.name for path in (project / out).glob("step_*"))
    assert len(saved) == 1 and saved[0] != f"step_{STEPS:06d}", saved
    resumed = _run(
        project, f"generated/{name}.py", f"checkpointer.output_dir={out}", "training.resume=auto"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_losses(losses(metrics), single_losses["full"])
