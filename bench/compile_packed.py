"""Does a compiled block recompile for every packed batch? Prints each step's time and dynamo's
graph count.

    .venv/bin/python bench/compile_packed.py

Packed rows on CPU attend per document in a Python loop over the row's spans. Traced into the
compiled block's graph, the spans become constants and every new layout compiles a new graph
(before the fix: 5 layouts, 5 graphs, 13-26 s each); left out of the graph
(`torch.compiler.disable` on `attend_per_document`), the first step compiles and the rest run at
once. tests/test_speed_features_end_to_end.py checks the graph count and the gradients.
"""

from __future__ import annotations

import time

import torch
from torch._dynamo.utils import counters

from tunegen.runtime.compiling import compile_blocks
from tunegen.runtime.models import llama


def packed(lengths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Position and document ids of one row packed with documents of these lengths."""
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"position_ids": positions, "document_ids": ids}


def main() -> None:
    torch.manual_seed(0)
    model = llama(
        vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, max_seq_len=64
    ).train()
    compile_blocks(model)
    tokens = torch.randint(0, 128, (1, 64))
    for step, lengths in enumerate([(10, 22, 32), (5, 59), (30, 30, 4), (1, 63), (16,) * 4]):
        start = time.perf_counter()
        model(tokens, **packed(lengths)).sum().backward()
        graphs = counters["stats"]["unique_graphs"]
        print(f"step {step}: {time.perf_counter() - start:.1f} s, {graphs} graphs in all")


if __name__ == "__main__":
    main()
