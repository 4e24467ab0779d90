"""Run one benchmark cell and record when each optimizer step ended, and the peak RSS.

    python bench/cell.py OUT.json script RECIPE.py [ARGS ...]   # a tunegen recipe (or any script)
    python bench/cell.py OUT.json tune run RECIPE --config X    # torchtune's `tune` command
    python bench/cell.py OUT.json hf MODEL_DIR STEPS BATCH SEQ  # transformers + peft LoRA loop

A global optimizer-step hook (`torch.optim.optimizer.register_optimizer_step_post_hook`) times
every framework the same way without editing its code; at exit OUT.json gets the step end
times (perf_counter seconds), the process's peak RSS and, for the `hf` cell, its losses. It
runs in whichever venv runs it: tunegen's, or the reference venv of bench/compare.py.
"""

from __future__ import annotations

import atexit
import json
import resource
import runpy
import sys
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def hf_lora(model_dir: str, steps: int, batch: int, seq: int) -> list[float]:
    """LoRA r8 on q, k, v, o (peft) on fixed random token ids: the W1 HF+peft cell."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = peft.LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model = peft.get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main() -> None:
    out, kind, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    record: dict = {"step_ends": [], "start": time.perf_counter()}
    register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: record["step_ends"].append(time.perf_counter())
    )

    def dump() -> None:
        record["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with open(out, "w", encoding="utf-8") as file:
            json.dump(record, file)

    atexit.register(dump)
    if kind == "script":
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")
    elif kind == "tune":
        from torchtune._cli.tune import main as tune

        sys.argv = ["tune", *rest]
        tune()
    elif kind == "hf":
        model_dir, steps, batch, seq = rest[0], *map(int, rest[1:4])
        record["losses"] = hf_lora(model_dir, steps, batch, seq)
    else:
        raise SystemExit(f"unknown cell kind {kind!r}")


if __name__ == "__main__":
    main()
