"""Time the ways to keep packed documents apart in attention, forward + backward, on this machine.

    python bench/packed_attention.py [--seq 1024] [--batch 4] [--device cpu]

Variants (all give the same numbers; the test suite checks the one the model uses):
- mask:     one SDPA call with a block-diagonal causal boolean mask: computes the
            cross-document blocks and masks them (the model's choice off CPU).
- segments: one causal SDPA call per document, never computing a cross-document block (the
            model's choice on CPU, where it measured 2.5x faster).
- causal:   plain causal SDPA over the whole row, the unpacked cost (leaks across documents;
            shown as the floor).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tunegen.runtime.models.llama import Documents, attend, document_mask, document_spans


def random_rows(batch: int, seq: int, generator: torch.Generator) -> torch.Tensor:
    """document_ids (batch, seq) of rows filled with documents of 16..seq/3 tokens."""
    rows = []
    for _ in range(batch):
        ids, doc = [], 0
        while len(ids) < seq:
            n = int(torch.randint(16, max(17, seq // 3), (1,), generator=generator))
            ids += [doc] * min(n, seq - len(ids))
            doc += 1
        rows.append(ids)
    return torch.tensor(rows)


def by_segments(q, k, v, document_ids):
    """One causal call per document: what `runtime.models.llama` does on CPU."""
    return attend(q, k, v, Documents(spans=document_spans(document_ids)))


def by_mask(q, k, v, document_ids):
    """One masked call per layer: what `runtime.models.llama` does on other devices."""
    return attend(q, k, v, Documents(mask=document_mask(document_ids)))


def causal(q, k, v, document_ids):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def timed(fn, q, k, v, ids, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        start = time.perf_counter()
        fn(qq, kk, vv, ids).sum().backward()
        if q.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    ids = random_rows(args.batch, args.seq, generator).to(args.device)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    kv_shape = (args.batch, args.kv_heads, args.seq, args.head_dim)
    q = torch.randn(shape, generator=generator).to(args.device)
    k = torch.randn(kv_shape, generator=generator).to(args.device)
    v = torch.randn(kv_shape, generator=generator).to(args.device)
    reference = by_segments(q, k, v, ids)
    assert torch.allclose(by_mask(q, k, v, ids), reference, atol=1e-5)
    docs = sum(len(set(row)) for row in ids.tolist())
    print(
        f"B={args.batch} T={args.seq} H={args.heads} K={args.kv_heads} Hd={args.head_dim} "
        f"documents={docs} device={args.device} threads={torch.get_num_threads()}"
    )
    for name, fn in (("mask", by_mask), ("segments", by_segments), ("causal", causal)):
        print(f"{name:>9}: {timed(fn, q, k, v, ids, args.repeats) * 1000:8.1f} ms fwd+bwd")


if __name__ == "__main__":
    main()
