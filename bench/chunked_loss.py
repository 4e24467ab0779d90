"""Time the plain and the chunked cross-entropy (forward + backward through the output projection).

    .venv/bin/python bench/chunked_loss.py [--batch 4] [--seq 256] [--dim 512] [--vocab 8192]

`plain`: the logits `hidden @ W.T` (B, T, V), then `CrossEntropyLoss` (fp32). `chunked`:
`ChunkedCrossEntropyLoss` on the hidden states, projecting only the rows whose next token carries
loss, a chunk at a time. Timed with every position a target and with half of them masked (a
prompt or padding). Medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tunegen.runtime.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (
        ("batch", 4),
        ("seq", 256),
        ("dim", 512),
        ("vocab", 8192),
        ("repeats", 5),
    ):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = (torch.randn(args.vocab, args.dim, device=args.device) * 0.02).requires_grad_(True)
    hidden = torch.randn(args.batch, args.seq, args.dim, device=args.device)
    losses = {
        "plain": lambda h, labels: CrossEntropyLoss()(F.linear(h, weight), labels),
        "chunked": lambda h, labels: ChunkedCrossEntropyLoss()(h, weight, labels),
    }
    for share in (1.0, 0.5):
        labels = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
        labels[:, int(args.seq * share) :] = -100
        times: dict[str, list[float]] = {name: [] for name in losses}
        for _ in range(args.repeats):
            for name, loss_fn in losses.items():
                h = hidden.clone().requires_grad_(True)
                start = time.perf_counter()
                loss, _ = loss_fn(h, labels)
                loss.backward()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                weight.grad = None
        medians = ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times.items())
        print(f"targets {share:.0%}: {medians}")


if __name__ == "__main__":
    main()
