"""Decoding: greedy for evaluation (`generate`, `generate_batch`), sampling for chat and RL (`sample`).

No KV cache: every step re-runs the model on the whole (windowed) sequence. That is simple to
read and fast enough for the small models and short prompts that evaluation uses here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["generate", "generate_batch", "sample", "sample_next"]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout), then put the model back into its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    stop_tokens: Collection[int] = (),
) -> list[int]:
    """Greedily extend `prompt`; return only the new tokens, without the stop token that ended it.

    The model sees at most its last `model.max_seq_len` tokens. It runs in eval mode (no dropout)
    and is put back into its previous train/eval mode afterwards.
    """
    if not prompt:
        raise ValueError("generate needs a non-empty prompt")
    device = next(model.parameters()).device
    tokens = list(prompt)
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            window = torch.tensor([tokens[-model.max_seq_len :]], device=device)  # (1, T)
            next_token = int(model(window)[0, -1].argmax())
            if next_token in stop_tokens:
                break
            tokens.append(next_token)
    return tokens[len(prompt) :]


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_tokens: Collection[int] = (),
    pad_id: int = 0,
) -> list[list[int]]:
    """`generate` for several prompts at once; returns the same tokens as calling it per prompt.

    Rows are right-padded with `pad_id` and each row reads the logits at its own last real
    position. Causal attention means padding after a position never affects it, so no attention
    mask or position offsets are needed and `pad_id`'s value does not change the result. Finished
    rows are dropped from the batch.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate_batch needs non-empty prompts")
    device = next(model.parameters()).device
    sequences = [list(p) for p in prompts]
    active = list(range(len(prompts)))  # rows that have not stopped yet
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            if not active:
                break
            windows = [sequences[i][-model.max_seq_len :] for i in active]
            batch = torch.full((len(windows), max(map(len, windows))), pad_id)  # (B, T)
            for row, window in enumerate(windows):
                batch[row, : len(window)] = torch.tensor(window)
            logits = model(batch.to(device))  # (B, T, V)
            rows = torch.arange(len(windows), device=device)  # (B,)
            last = torch.tensor([len(w) - 1 for w in windows], device=device)  # (B,)
            next_tokens = logits[rows, last].argmax(-1).tolist()  # (B,)
            active_next = []
            for i, token in zip(active, next_tokens, strict=True):
                if token not in stop_tokens:
                    sequences[i].append(token)
                    active_next.append(i)
            active = active_next
    return [seq[len(p) :] for seq, p in zip(sequences, prompts, strict=True)]


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One next token per row of `logits` (B, V): argmax at temperature 0, else a random draw.

    The draw keeps the `top_k` most likely tokens, then the smallest set whose probability
    reaches `top_p` (nucleus sampling), and samples from `softmax(logits / temperature)` over
    them. Randomness comes from `generator` only (on its own device), never the global RNG
    unless no generator is given.
    """
    if temperature < 0 or not 0 < top_p <= 1 or (top_k is not None and top_k < 1):
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}"
        )
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature  # (B, V)
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_scores.softmax(-1)
        # Drop a token when the tokens above it already reach top_p; the first always stays.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(-1)
    device = generator.device if generator is not None else probs.device
    picked = torch.multinomial(probs.to(device), 1, generator=generator)  # (B, 1)
    return picked[:, 0].to(logits.device)


@torch.no_grad()
def sample(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    stop_tokens: Collection[int] = (),
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """New tokens per prompt (stop token excluded); temperature 0 = greedy. Rows finish independently.

    Prompts may differ in length (right-padded with `pad_id`, which never changes the result:
    each row reads the logits at its own last position). The same `generator` state gives the
    same tokens; the global RNG is not touched when one is given. Runs in eval mode and puts the
    model back into its previous mode. Sampling options are as in `sample_next`.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample needs non-empty prompts")
    device = next(model.parameters()).device
    sequences = [list(p) for p in prompts]
    active = list(range(len(prompts)))  # rows that have not stopped yet
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            if not active:
                break
            windows = [sequences[i][-model.max_seq_len :] for i in active]
            batch = torch.full((len(windows), max(map(len, windows))), pad_id)  # (B, T)
            for row, window in enumerate(windows):
                batch[row, : len(window)] = torch.tensor(window)
            logits = model(batch.to(device))  # (B, T, V)
            rows = torch.arange(len(windows), device=device)  # (B,)
            last = torch.tensor([len(w) - 1 for w in windows], device=device)  # (B,)
            next_tokens = sample_next(
                logits[rows, last],
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                generator=generator,
            ).tolist()
            active_next = []
            for i, token in zip(active, next_tokens, strict=True):
                if token not in stop_tokens:
                    sequences[i].append(token)
                    active_next.append(i)
            active = active_next
    return [seq[len(p) :] for seq, p in zip(sequences, prompts, strict=True)]
