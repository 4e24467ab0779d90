"""Decoding: greedy for evaluation (`generate`, `generate_batch`), sampling for chat and RL
(`sample`, `sample_stream`), all on one loop with a KV cache.

The prompts are fed once, left-padded into a `KVCache` (`runtime.models.llama`); each later step
feeds only the tokens just picked, so a step costs one token's compute instead of the whole
sequence's. The model sees at most its last `max_seq_len` tokens: once a sequence would outgrow
that window, the remaining steps re-run the model on the window (no cache), exactly as a model
that has never seen the dropped tokens. Models without `new_kv_cache` always take that path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from tunegen.runtime.models.llama import KVCache

__all__ = ["generate", "generate_batch", "sample", "sample_next", "sample_stream"]

#: Picks one token per row from next-token logits (B, V).
Picker = Callable[[Tensor], Tensor]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout), then put the model back into its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
    (tokens,) = generate_batch(
        model, [prompt], max_new_tokens=max_new_tokens, stop_tokens=stop_tokens
    )
    return tokens


def generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_tokens: Collection[int] = (),
    pad_id: int = 0,
) -> list[list[int]]:
    """`generate` for several prompts at once; returns the same tokens as calling it per prompt.

    Padding never reaches a real token (masked out of attention), so `pad_id`'s value does not
    change the result. Finished rows are dropped from the batch.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate_batch needs non-empty prompts")
    steps = _decode(model, prompts, max_new_tokens, _greedy, stop_tokens, pad_id)
    return _collect(steps, len(prompts))


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
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

    Prompts may differ in length; `pad_id`'s value never changes the result. The same `generator`
    state gives the same tokens; the global RNG is not touched when one is given. Runs in eval
    mode and puts the model back into its previous mode. Sampling options are as in `sample_next`.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample needs non-empty prompts")
    pick = partial(
        sample_next, temperature=temperature, top_p=top_p, top_k=top_k, generator=generator
    )
    steps = _decode(model, prompts, max_new_tokens, pick, stop_tokens, pad_id)
    return _collect(steps, len(prompts))


def sample_stream(
    model: nn.Module,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    stop_tokens: Collection[int] = (),
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """`sample` for one prompt, yielding each new token as soon as it is picked (for chat).

    The model is in eval mode while the iterator runs and back in its previous mode once it is
    exhausted or closed.
    """
    if not prompt:
        raise ValueError("sample_stream needs a non-empty prompt")
    pick = partial(
        sample_next, temperature=temperature, top_p=top_p, top_k=top_k, generator=generator
    )
    for picked in _decode(model, [prompt], max_new_tokens, pick, stop_tokens, 0):
        for _, token in picked:
            yield token


def _greedy(logits: Tensor) -> Tensor:
    return logits.argmax(-1)


def _collect(steps: Iterator[list[tuple[int, int]]], n: int) -> list[list[int]]:
    """The new tokens of each of `n` rows, from `_decode`'s per-step (row, token) lists."""
    out: list[list[int]] = [[] for _ in range(n)]
    for picked in steps:
        for row, token in picked:
            out[row].append(token)
    return out


@torch.no_grad()  # on a generator function, torch disables grad only while it runs
def _decode(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pick: Picker,
    stop_tokens: Collection[int],
    pad_id: int,
) -> Iterator[list[tuple[int, int]]]:
    """Each step, the (row, token) pairs picked for the rows still going.

    A row ends at a stop token (not yielded) or after `max_new_tokens`. Steps use the KV cache
    while the longest prompt plus the tokens so far fit in `max_seq_len`, then the window.
    """
    window = model.max_seq_len
    sequences = [list(p) for p in prompts]
    active = list(range(len(prompts)))  # rows that have not stopped yet
    longest = max(map(len, prompts), default=0)
    cached_steps = window - longest + 1 if hasattr(model, "new_kv_cache") else 0
    cache = None
    with _eval_mode(model):
        for step in range(max_new_tokens):
            if not active:
                return
            if step < cached_steps:
                if cache is None:
                    max_len = min(window, longest + max_new_tokens - 1)
                    cache = model.new_kv_cache([longest - len(p) for p in prompts], max_len)
                logits = _cached_logits(model, cache, [sequences[i] for i in active], step, pad_id)
            else:
                logits = _window_logits(model, [sequences[i] for i in active], pad_id)
            tokens = pick(logits).tolist()  # (B,)
            picked = [(i, t) for i, t in zip(active, tokens, strict=True) if t not in stop_tokens]
            if cache is not None and len(picked) < len(active):
                keep = [n for n, t in enumerate(tokens) if t not in stop_tokens]
                cache.keep(torch.tensor(keep, dtype=torch.long, device=logits.device))
            for i, token in picked:
                sequences[i].append(token)
            active = [i for i, _ in picked]
            yield picked


def _cached_logits(
    model: nn.Module, cache: KVCache, sequences: list[list[int]], step: int, pad_id: int
) -> Tensor:
    """Next-token logits (B, V): the left-padded prompts at step 0, then each row's last token."""
    device = next(model.parameters()).device
    if step == 0:
        longest = max(map(len, sequences))
        batch = torch.tensor([[pad_id] * (longest - len(s)) + s for s in sequences])  # (B, T)
    else:
        batch = torch.tensor([[s[-1]] for s in sequences])  # (B, 1)
    return model(batch.to(device), cache=cache, logits_to_keep=1)[:, -1]


def _window_logits(model: nn.Module, sequences: list[list[int]], pad_id: int) -> Tensor:
    """Next-token logits (B, V) from each row's last `max_seq_len` tokens, no cache.

    Rows are right-padded and each reads its own last real position: causal attention means
    padding after a position never affects it, so no mask or position offsets are needed.
    """
    device = next(model.parameters()).device
    windows = [s[-model.max_seq_len :] for s in sequences]
    batch = torch.full((len(windows), max(map(len, windows))), pad_id)  # (B, T)
    for row, window in enumerate(windows):
        batch[row, : len(window)] = torch.tensor(window)
    logits = model(batch.to(device))  # (B, T, V)
    rows = torch.arange(len(windows), device=device)  # (B,)
    last = torch.tensor([len(w) - 1 for w in windows], device=device)  # (B,)
    return logits[rows, last]
