"""tunegen against torchtune and transformers + peft on W1 and W2, side by side, in one command.

    .venv/bin/python bench/compare.py [--rounds 3] [--quick] [--work DIR] [--venv DIR]

1. Builds the reference venv once (default ~/.cache/tunegen-bench/venv): torch 2.13.0, then
   torchtune 0.6.1 + torchao 0.10.0 (+ its tokenizer deps), then transformers 5.24.0 + peft
   0.18.1: the versions that work together (../shared/PERFORMANCE_NOTES.md). tunegen never
   imports them; only the reference cells run in that venv.
2. Writes the inputs (bench/workloads.py): the W1 random-init checkpoint (33.6 M parameters, HF
   format, the bundled sentencepiece tokenizer), W1 fixed-length text and W2 variable-length
   instruct data (400 samples of 32-512 tokens, ~30% prompt).
3. Runs the cells in interleaved rounds, one process per cell (bench/cell.py times every
   optimizer step with a global hook and records the peak RSS):
   - W1 (batch 4 x 256 tokens, every token carries loss): tunegen full / LoRA (spec ->
     generated recipe -> the recipe), torchtune full / LoRA (`tune run`), HF + peft LoRA;
   - W2 (one epoch, batch 4, max_seq_len 512, prompt masked): tunegen full / LoRA padded,
     packed and with token-budget batches; torchtune full / LoRA with `packed: False` and
     `packed: True`.
   Every round starts with a matmul-peak cell (fp32 2048^3 matmuls, same threads).
4. Prints one table per workload: tokens/s and loss-tokens/s over the timed steps (all but the
   first, which holds one-time costs), peak RSS, the loss after the run, the model FLOP rate as a
   % of the same round's matmul peak (6N per token for full, 4N + the adapters for LoRA, plus
   attention), and the paired per-round ratio of each cell to torchtune's cell of the same
   method (median over rounds, then each round's).

W2's token counts are those of tunegen's dataset (same tokenizer and text for every framework;
torchtune's template adds no tokens with `prompt_template: null`). `--quick` runs tiny shapes
for one round: a check that every cell runs, not a measurement. Run the real benchmark alone
on the machine: parallel processes on a few cores slow each other 3-8x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import FULL, G1, QUICK, Shape, write_checkpoint, write_w1_data, write_w2_data

REPO = Path(__file__).resolve().parents[1]
CELL = REPO / "bench" / "cell.py"
REFERENCE = [
    ["torch==2.13.0"],
    ["torchtune==0.6.1", "torchao==0.10.0", "omegaconf", "sentencepiece", "tiktoken",
     "safetensors", "blobfile", "tokenizers"],
    ["transformers==5.24.0", "peft==0.18.1"],
]  # fmt: skip
LORA = {"rank": 8, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
W2_BATCH = 4


@dataclass(frozen=True)
class Preset:
    """What one invocation measures: the shapes, and the settings both frameworks train with."""

    shape: Shape
    workloads: tuple[str, ...]
    tunegen_w2: tuple[str, ...]  # tunegen's W2 variants: "padded", "packed", "budget"
    torchtune_packed: tuple[bool, ...]  # torchtune's W2 cells: `packed: False` / `True`
    tunegen_training: dict = field(default_factory=dict)  # extra spec `training:` keys
    torchtune: dict = field(default_factory=dict)  # extra torchtune config keys
    peak: tuple[str, str, str, str] = ("cpu", "float32", "2048", "5")  # device dtype n seconds


PRESETS = {
    "cpu": Preset(FULL, ("W1", "W2"), ("padded", "packed", "budget"), (False, True)),
    "quick": Preset(QUICK, ("W1", "W2"), ("padded", "packed", "budget"), (False, True),
                    peak=("cpu", "float32", "512", "1")),
    # G1 (issue 18, on a lent GPU): W2's recipe at a Llama-3.2-1B-like size, seq 2048, bf16,
    # both frameworks with their best settings (compile, packing, fused AdamW).
    "g1": Preset(G1, ("W2",), ("packed",), (True,),
                 tunegen_training={"dtype": "bf16", "compile": True, "device": "cuda"},
                 torchtune={"dtype": "bf16", "compile": True, "device": "cuda",
                            "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-4,
                                          "fused": True}},
                 peak=("cuda", "bfloat16", "8192", "5")),
}  # fmt: skip


@dataclass
class Cell:
    """One process to run per round: its command, and what its tokens and FLOPs are."""

    name: str
    workload: str  # "W1" or "W2"
    method: str  # "full" or "lora"
    peer: str  # "tunegen", "torchtune" or "hf"
    argv: list[str]
    loss_of: str  # how to read the final loss: "jsonl:<path>", "tune:<dir>" or "hf"
    config: str | None = None  # torchtune: the config file's stem in the work dir
    results: list[dict] = field(default_factory=list)
    variant: str = ""  # W2: "padded", "packed", "budget" (tunegen), "packed True/False" (torchtune)
    #: W2: the rows one epoch draws batches of W2_BATCH from (samples, or packs), where the last
    #: partial batch is dropped; None where every sample is trained (token-budget batches).
    epoch_rows: int | None = None


def build_reference_venv(venv: Path) -> Path:
    """Create the reference venv (once) and return its python."""
    python = venv / "bin" / "python"
    marker = venv / ".tunegen-bench-complete"
    if marker.exists():
        return python
    print(f"building the reference venv in {venv} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for group in REFERENCE:
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *group]
        subprocess.run(pip, check=True)
    marker.write_text("\n".join(" ".join(group) for group in REFERENCE) + "\n")
    return python


def matmul_peak_argv() -> list[str]:
    code = textwrap.dedent(
        """
        import json, sys, time, torch
        device, dtype, n, seconds = sys.argv[1], getattr(torch, sys.argv[2]), *sys.argv[3:]
        n = int(n); a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b; torch.cuda.synchronize() if device == "cuda" else None
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < float(seconds):
            a @ b; count += 1
            torch.cuda.synchronize() if device == "cuda" else None
        print(json.dumps({"gflops": 2 * n**3 * count / (time.perf_counter() - start) / 1e9}))
        """
    )
    return [sys.executable, "-c", code]


# -- the cells ------------------------------------------------------------------------------------


def tunegen_spec(name: str, method: str, data: dict, training: dict, model: Path) -> dict:
    spec = {"name": name, "method": method, "model": str(model), "data": data}
    if method == "lora":
        spec["lora"] = LORA
    spec["training"] = {"lr": 1e-4, "warmup_steps": 0, "clip_grad_norm": None, **training}
    spec["checkpoint"] = {"output_dir": f"runs/{name}", "export_hf": False}
    spec["logging"] = {"progress": "lines"}
    return spec


def tunegen_cells(work: Path, preset: Preset) -> list[Cell]:
    """Compile the tunegen cells' specs in `work` (tunegen new) and return the cells."""
    shape, model = preset.shape, work / "model"
    w1 = {"path": "w1.jsonl", "format": "text", "max_seq_len": shape.w1_seq}
    w2 = {"path": "w2.jsonl", "template": "plain", "max_seq_len": shape.w2_max}
    w1_training = {"batch_size": shape.w1_batch, "max_steps": shape.w1_steps}
    w2_variants = {
        "padded": (w2, {"batch_size": W2_BATCH}),
        "packed": ({**w2, "packed": True}, {"batch_size": W2_BATCH}),
        "budget": (w2, {"tokens_per_batch": W2_BATCH * shape.w2_max}),
    }
    variants = {
        "W1": [("", w1, w1_training)],
        "W2": [(name, *w2_variants[name]) for name in preset.tunegen_w2],
    }
    cells = []
    for workload in preset.workloads:
        for variant, data, training in variants[workload]:
            training = {**training, **preset.tunegen_training}
            for method in ("full", "lora"):
                name = "_".join(filter(None, ["tg", workload.lower(), method, variant]))
                spec = tunegen_spec(name, method, data, training, model)
                (work / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
                subprocess.run(
                    [sys.executable, "-m", "tunegen.compiler", "new", "--force", "-s", f"{name}.yaml"],
                    cwd=work, check=True, capture_output=True,
                )  # fmt: skip
                argv = [f"generated/{name}.py", "--config", f"generated/{name}.yaml"]
                cells.append(
                    Cell(
                        f"tunegen {method} {variant}".strip(), workload, method, "tunegen",
                        [sys.executable, str(CELL), "{out}", "script", *argv,
                         "checkpointer.output_dir={run}"],
                        "jsonl:{run}/metrics.jsonl",
                        variant=variant,
                    )
                )  # fmt: skip
    return cells


def torchtune_config(
    method: str, dataset: dict, shape: Shape, seq: int, batch: int, work: Path, **extra
) -> dict:
    """A torchtune 0.6.1 single-device recipe config for the W1 shape in `work/model`."""
    arch = {
        "vocab_size": shape.vocab_size, "num_layers": shape.n_layers, "num_heads": shape.n_heads,
        "num_kv_heads": shape.n_kv_heads, "embed_dim": shape.dim, "max_seq_len": seq,
        "intermediate_dim": shape.hidden_dim, "rope_base": 500000,
    }  # fmt: skip
    if method == "lora":
        model = {"_component_": "torchtune.models.llama3.lora_llama3",
                 "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
                 "apply_lora_to_mlp": False, "apply_lora_to_output": False,
                 "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, **arch}  # fmt: skip
    else:
        model = {"_component_": "torchtune.models.llama3.llama3", **arch}
    return {
        "output_dir": "{run}",
        "tokenizer": {"_component_": "torchtune.models.llama2.llama2_tokenizer",
                      "path": str(work / "model" / "tokenizer.model"), "max_seq_len": seq,
                      "prompt_template": None},
        "dataset": dataset,
        "seed": 0,
        "shuffle": True,
        "model": model,
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(work / "model"),
                         "checkpoint_files": ["model.safetensors"], "recipe_checkpoint": None,
                         "output_dir": "{run}", "model_type": "LLAMA3"},
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": True,
        "batch_size": batch,
        "epochs": 1,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-4, "fused": False},
        "lr_scheduler": {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                         "num_warmup_steps": 0},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "max_steps_per_epoch": None,
        "gradient_accumulation_steps": 1,
        "clip_grad_norm": None,
        "compile": False,
        "optimizer_in_bwd": False,
        "device": "cpu",
        "enable_activation_checkpointing": False,
        "enable_activation_offloading": False,
        "dtype": "fp32",
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                          "log_dir": "{run}/logs"},
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
        **extra,
    }  # fmt: skip


def torchtune_cells(work: Path, preset: Preset, reference: Path) -> list[Cell]:
    w1 = {"_component_": "torchtune.datasets.text_completion_dataset", "source": "json",
          "data_files": str(work / "w1.jsonl"), "column": "text", "split": "train"}  # fmt: skip
    shape = preset.shape
    cells = []
    for method in ("full", "lora"):
        recipe = f"{method}_finetune_single_device"
        runs = [("W1", "", w1, shape.w1_seq, {"max_steps_per_epoch": shape.w1_steps})]
        for packed in preset.torchtune_packed:
            w2 = {"_component_": "torchtune.datasets.instruct_dataset", "source": "json",
                  "data_files": str(work / "w2.jsonl"), "split": "train", "packed": packed,
                  "column_map": {"input": "instruction", "output": "output"},
                  "train_on_input": False}  # fmt: skip
            runs.append(("W2", f"packed {packed}", w2, shape.w2_max, {}))
        for workload, variant, dataset, seq, extra in runs:
            if workload not in preset.workloads:
                continue
            extra = {**extra, **preset.torchtune}
            name = f"tt_{workload.lower()}_{method}_{variant.replace(' ', '_')}".rstrip("_")
            batch = shape.w1_batch if workload == "W1" else W2_BATCH
            config = torchtune_config(method, dataset, shape, seq, batch, work, **extra)
            (work / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            cells.append(
                Cell(
                    f"torchtune {method} {variant}".strip(), workload, method, "torchtune",
                    [str(reference), str(CELL), "{out}", "tune", "run", recipe,
                     "--config", "{config}"],
                    "tune:{run}/logs",
                    name,
                    variant=variant,
                )
            )  # fmt: skip
    if "W1" not in preset.workloads:
        return cells
    cells.append(
        Cell(
            "hf+peft lora", "W1", "lora", "hf",
            [str(reference), str(CELL), "{out}", "hf", str(work / "model"), str(shape.w1_steps),
             str(shape.w1_batch), str(shape.w1_seq)],
            "hf",
        )
    )  # fmt: skip
    return cells


# -- measuring ------------------------------------------------------------------------------------


def run_cell(cell: Cell, work: Path, round_index: int) -> dict:
    run = work / "runs" / f"{cell.name.replace(' ', '_').replace('+', '_')}_{round_index}"
    out = run.with_suffix(".json")
    shutil.rmtree(run, ignore_errors=True)  # a run dir with checkpoints would be resumed
    run.parent.mkdir(parents=True, exist_ok=True)
    config = cell.config
    if config is not None:  # torchtune: the config names the run dir
        text = (work / f"{config}.yaml").read_text().replace("{run}", str(run))
        (work / f"{config}_{round_index}.yaml").write_text(text)
    argv = [
        part.format(out=out, run=run, config=work / f"{config}_{round_index}.yaml")
        for part in cell.argv
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench")}
    done = subprocess.run(argv, cwd=work, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{cell.name} ({cell.workload}) failed:\n{done.stderr[-3000:]}")
    record = json.loads(out.read_text())
    record["loss"] = final_loss(cell.loss_of.format(run=run), record)
    return record


def final_loss(where: str, record: dict) -> float | None:
    kind, _, path = where.partition(":")
    if kind == "hf":
        return record["losses"][-1]
    if kind == "jsonl":
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row][-1]
    lines = [line for log in Path(path).glob("*.txt") for line in log.read_text().splitlines()]
    values = [
        float(part.split(":")[1])
        for line in lines
        for part in line.split()
        if part.startswith("loss:")
    ]
    return values[-1] if values else None


def w2_samples(work: Path, seq: int) -> list[dict]:
    """The W2 samples as tunegen tokenizes them (`tokens`, `labels`)."""
    from tunegen.runtime.data import InstructDataset
    from tunegen.runtime.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(work / "model" / "tokenizer.model"))
    dataset = InstructDataset(
        tokenizer, source=work / "w2.jsonl", template="plain", max_seq_len=seq
    )
    return [dataset[i] for i in range(len(dataset))]


def w2_totals(items: list[dict]) -> tuple[int, int]:
    """(tokens, loss tokens) of one W2 epoch."""
    tokens = sum(len(item["tokens"]) for item in items)
    loss_tokens = sum(sum(1 for label in item["labels"][1:] if label != -100) for item in items)
    return tokens, loss_tokens


def set_epoch_rows(cells: list[Cell], items: list[dict], seq: int) -> None:
    """Each W2 cell's rows per epoch: samples unpacked, packs for tunegen's packed cells
    (best-fit-decreasing), none for token budgets and torchtune's packed cells.

    Both frameworks drop the last partial batch, so a packed epoch trains slightly less than
    all the tokens (tunegen 128 of its 129 packs on W2, torchtune 160 of 162); `throughput`
    counts only tunegen's rows trained. torchtune's packs come from its own tokenizer, whose
    lengths differ slightly, so its packed cells are credited with every token: if anything,
    that flatters torchtune (by 1.2% on W2)."""
    from tunegen.runtime.data.packing import best_fit_decreasing

    lengths = [len(item["tokens"]) for item in items]
    rows = {
        ("tunegen", "packed"): len(best_fit_decreasing(lengths, seq)),
        ("tunegen", "budget"): None,
        ("torchtune", "packed True"): None,
    }
    for cell in cells:
        if cell.workload == "W2":
            cell.epoch_rows = rows.get((cell.peer, cell.variant), len(items))


def flops_per_token(shape: Shape, method: str, seq: int) -> float:
    n = shape.matmul_params()
    attention = 6 * shape.n_layers * seq * shape.dim  # QK^T and AV, forward and backward (causal)
    return (6 if method == "full" else 4) * n + attention


def summarize(cells: list[Cell], peaks: list[float], shape: Shape, totals: dict) -> None:
    """One Markdown table per workload (see the module docstring)."""
    for workload in ("W1", "W2"):
        chosen = [cell for cell in cells if cell.workload == workload]
        if not chosen:
            continue
        seq = shape.w1_seq if workload == "W1" else shape.w2_max
        print(f"\n### {workload}\n")
        print(
            "| cell | tokens/s | loss-tokens/s | peak RSS MiB | loss | % matmul peak"
            " | loss-tokens/s vs each peer cell: median (per round) |"
        )
        print("|---|---|---|---|---|---|---|")
        for cell in chosen:
            rates = [throughput(r, cell, totals[workload]) for r in cell.results]
            tok = [t for t, _ in rates]
            per_token = flops_per_token(shape, cell.method, seq) / 1e9
            peak_pct = [100 * t * per_token / p for t, p in zip(tok, peaks, strict=True)]
            rss = statistics.median(r["peak_rss"] for r in cell.results) / 2**20
            loss = cell.results[-1]["loss"]
            print(
                f"| {cell.name} | {statistics.median(tok):.0f}"
                f" | {statistics.median(lt for _, lt in rates):.0f} | {rss:.0f}"
                f" | {'-' if loss is None else f'{loss:.4f}'} | {statistics.median(peak_pct):.0f}%"
                f" | {paired_ratios(cell, rates, chosen, totals[workload])} |"
            )


def paired_ratios(cell: Cell, rates: list, chosen: list[Cell], totals: tuple[int, int]) -> str:
    """A tunegen cell's loss-tokens/s over each peer cell's of the same method, round by round."""
    if cell.peer != "tunegen":
        return ""
    texts = []
    for peer in chosen:
        if peer.peer == "tunegen" or peer.method != cell.method:
            continue
        ratios = [
            mine[1] / throughput(theirs, peer, totals)[1]
            for mine, theirs in zip(rates, peer.results, strict=True)
        ]
        per_round = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        texts.append(f"{peer.name}: {statistics.median(ratios):.2f} ({per_round})")
    return "; ".join(texts)


def throughput(record: dict, cell: Cell, totals: tuple[int, int]) -> tuple[float, float]:
    """(tokens/s, loss-tokens/s) over the run, the first step's one-time costs left out: the
    run time is (last - first step end) x n / (n - 1)."""
    ends = record["step_ends"]
    n = len(ends)
    seconds = (ends[-1] - ends[0]) * n / (n - 1) if n > 1 else ends[0] - record["start"]
    tokens, loss_tokens = totals
    if cell.workload == "W1":  # fixed-length steps: the totals are per step
        tokens, loss_tokens = tokens * n, loss_tokens * n
    elif cell.epoch_rows is not None:  # the dropped last partial batch did not train
        share = min(1.0, n * W2_BATCH / cell.epoch_rows)
        tokens, loss_tokens = tokens * share, loss_tokens * share
    return tokens / seconds, loss_tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round: a smoke test")
    parser.add_argument(
        "--g1", action="store_true",
        help="on a CUDA GPU: W2 at a Llama-3.2-1B-like size, seq 2048, bf16, compile, packed",
    )  # fmt: skip
    parser.add_argument(
        "--reference-python", type=Path, metavar="PYTHON",
        help="a python that already has torchtune (and transformers + peft for W1): no venv is"
        " built (a machine without internet, e.g. the lent GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--work", type=Path, default=Path.home() / ".cache" / "tunegen-bench" / "work"
    )
    parser.add_argument(
        "--venv", type=Path, default=Path.home() / ".cache" / "tunegen-bench" / "venv"
    )
    parser.add_argument("--only", choices=["W1", "W2"], help="run one workload's cells")
    parser.add_argument(
        "--peers", nargs="+", default=["tunegen", "torchtune", "hf"], help="whose cells to run"
    )
    parser.add_argument(
        "--cells", nargs="+", metavar="TEXT",
        help="run only the cells whose name contains one of these (e.g. 'packed' 'torchtune')",
    )  # fmt: skip
    args = parser.parse_args()
    name = "g1" if args.g1 else "quick" if args.quick else "cpu"
    preset, rounds = PRESETS[name], 1 if args.quick else args.rounds
    shape = preset.shape
    work = args.work / {"cpu": "full"}.get(name, name)
    needs_reference = bool({"torchtune", "hf"} & set(args.peers))
    if args.reference_python is not None:
        reference = args.reference_python
    else:
        reference = build_reference_venv(args.venv) if needs_reference else Path(sys.executable)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "w2.jsonl").exists():
        # The G1 model is written in bf16 (half the disk; both frameworks train it in bf16).
        dtype = torch.bfloat16 if args.g1 else torch.float32
        write_checkpoint(work / "model", shape, max(shape.w1_seq, shape.w2_max), dtype)
        write_w1_data(work / "w1.jsonl", shape)
        write_w2_data(work / "w2.jsonl", shape)
    cells = tunegen_cells(work, preset) + torchtune_cells(work, preset, reference)
    cells = [cell for cell in cells if cell.peer in args.peers]
    if args.only:
        cells = [cell for cell in cells if cell.workload == args.only]
    if args.cells:
        cells = [cell for cell in cells if any(text in cell.name for text in args.cells)]
    w1_step = shape.w1_batch * shape.w1_seq
    items = w2_samples(work, shape.w2_max)
    set_epoch_rows(cells, items, shape.w2_max)
    totals = {"W1": (w1_step, shape.w1_batch * (shape.w1_seq - 1)), "W2": w2_totals(items)}
    peaks = []
    for index in range(rounds):
        peak = subprocess.run([*matmul_peak_argv(), *preset.peak],
                              capture_output=True, text=True, check=True)  # fmt: skip
        peaks.append(json.loads(peak.stdout)["gflops"])
        print(f"round {index + 1}/{rounds}: matmul peak {peaks[-1]:.0f} GFLOP/s", flush=True)
        for cell in cells:
            start = time.perf_counter()
            cell.results.append(run_cell(cell, work, index))
            print(f"  {cell.workload} {cell.name}: {time.perf_counter() - start:.0f} s", flush=True)
    summarize(cells, peaks, shape, totals)


if __name__ == "__main__":
    main()
