"""Training-step time of full fine-tuning and LoRA on the W1 shape, in one process, A/B.

    .venv/bin/python bench/step_time.py [--rounds 5] [--steps 4] [--quick]

W1 is the shape of docs/benchmarks.md and ../shared/PERFORMANCE_NOTES.md: a Llama-3-style
model of 33.6 M parameters (vocab 8192, dim 512, 8 layers, 8 query / 4 key-value heads, MLP
1536), fp32, batches of 4 x 256 random token ids, AdamW. Cells:

- `full`: every weight trains.
- `lora`: LoRA r8 on q, k, v, o as the runtime computes it (`LoRALinear`: one addmm adds the
  scaled update to the base output).
- `lora-unfused`: the same adapters computed as `y + lora_b(lora_a(x)) * scaling`, the textbook
  formula (what the runtime did before): two extra elementwise passes over every output.

The cells run in interleaved rounds (full, lora, lora-unfused, full, ...) so that a busy machine
slows them alike; the table gives the median step time per cell and, per round, the ratios
full / lora, which is what "LoRA speed tracks its FLOPs" is about (LoRA r8 on q,k,v,o does
~1.45x fewer FLOPs than full on this shape: no weight gradients for the frozen layers).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tunegen.runtime.lora import LoRALinear, apply_lora, mark_only_lora_trainable
from tunegen.runtime.losses import CrossEntropyLoss
from tunegen.runtime.models import llama

W1 = dict(vocab_size=8192, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1536)
QUICK = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128)


def unfused_forward(self: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """LoRALinear.forward as the textbook writes it (the runtime before the fused path)."""
    y = torch.nn.functional.linear(x, self.weight, self.bias)
    return y + self.lora_b(self.lora_a(self.dropout(x))) * self.scaling


def make_step(cell: str, shape: dict, batch: int, seq: int) -> Callable[[], None]:
    """A closure that runs one optimizer step of `cell` on fixed random tokens."""
    torch.manual_seed(0)
    model = llama(**shape, max_seq_len=seq)
    if cell != "full":
        apply_lora(model, targets=["q_proj", "k_proj", "v_proj", "o_proj"], rank=8, alpha=16.0)
        mark_only_lora_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = CrossEntropyLoss()
    tokens = torch.randint(0, shape["vocab_size"], (batch, seq))
    unfused = cell == "lora-unfused"

    def step() -> None:
        original = LoRALinear.forward
        if unfused:
            LoRALinear.forward = unfused_forward
        try:
            loss, count = loss_fn(model(tokens), tokens)
            (loss / count).backward()
        finally:
            LoRALinear.forward = original
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per cell and round")
    parser.add_argument("--quick", action="store_true", help="a tiny shape, one round")
    args = parser.parse_args()
    shape, batch, seq = (QUICK, 2, 32) if args.quick else (W1, 4, 256)
    rounds = 1 if args.quick else args.rounds
    cells = ("full", "lora", "lora-unfused")
    steps = {cell: make_step(cell, shape, batch, seq) for cell in cells}
    for step in steps.values():  # warm-up: first-touch allocations, optimizer state
        step()
    times: dict[str, list[float]] = {cell: [] for cell in cells}
    for _ in range(rounds):
        for cell in cells:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[cell]()
            times[cell].append((time.perf_counter() - start) / args.steps)
    print(f"threads {torch.get_num_threads()}, {rounds} rounds x {args.steps} steps")
    print("| cell | median s/step | full / cell (per round) |\n|---|---|---|")
    for cell in cells:
        ratios = [f / c for f, c in zip(times["full"], times[cell], strict=True)]
        ratio_text = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| {cell} | {statistics.median(times[cell]):.3f} | {ratio_text} |")


if __name__ == "__main__":
    main()
