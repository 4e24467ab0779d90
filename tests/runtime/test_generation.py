"""Greedy generation against a hand-written argmax loop."""

from __future__ import annotations

import torch

from tunegen.runtime.generation import generate, generate_batch
from tunegen.runtime.models import Transformer, llama


def small(max_seq_len: int = 64) -> Transformer:
    torch.manual_seed(0)
    model = llama(
        vocab_size=64,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=48,
        max_seq_len=max_seq_len,
    )
    # Random init at std 0.02 gives near-uniform logits that repeat one token forever; larger
    # weights make greedy outputs varied enough for stop-token and batching tests to bite.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    return model.eval()


def argmax_by_hand(model: Transformer, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([tokens[-model.max_seq_len :]]))  # (1, T, V)
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt) :]


PROMPT = [3, 17, 5, 42, 8, 1]


def test_greedy_equals_argmax_loop_and_respects_max_new_tokens() -> None:
    model = small()
    expected = argmax_by_hand(model, PROMPT, 12)
    assert len(set(expected)) > 2  # the model does not just repeat one token
    assert generate(model, PROMPT, max_new_tokens=12) == expected
    assert generate(model, PROMPT, max_new_tokens=5) == expected[:5]
    assert generate(model, PROMPT, max_new_tokens=0) == []


def test_stops_at_stop_token_and_omits_it() -> None:
    model = small()
    free = argmax_by_hand(model, PROMPT, 12)
    stop = free[4]
    first = free.index(stop)
    out = generate(model, PROMPT, max_new_tokens=12, stop_tokens={stop})
    assert out == free[:first]
    assert stop not in out
    unused = next(t for t in range(64) if t not in free)
    assert generate(model, PROMPT, max_new_tokens=12, stop_tokens=[unused]) == free


def test_never_feeds_more_than_max_seq_len() -> None:
    model = small(max_seq_len=8)
    prompt = list(range(20))  # longer than the model's context: only the last 8 tokens are seen
    fed_lengths: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: fed_lengths.append(args[0].shape[1]))
    try:
        out = generate(model, prompt, max_new_tokens=6)
    finally:
        hook.remove()
    assert max(fed_lengths) == 8 and len(fed_lengths) == 6
    assert out == argmax_by_hand(model, prompt, 6)


def test_restores_train_and_eval_mode() -> None:
    model = small()
    model.train()
    generate(model, PROMPT, max_new_tokens=2)
    assert model.training
    model.eval()
    generate(model, PROMPT, max_new_tokens=2)
    assert not model.training


def test_runs_in_eval_mode() -> None:
    model = small()
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda m, _args: modes.append(m.training))
    model.train()
    generate(model, PROMPT, max_new_tokens=3)
    assert modes == [False, False, False]


def test_batch_equals_unbatched() -> None:
    model = small(max_seq_len=12)
    prompts = [PROMPT, [9], [60, 2, 33], list(range(30, 44)), [7, 7, 7, 7, 7]]
    singles = [generate(model, p, max_new_tokens=10) for p in prompts]
    assert len({tuple(s) for s in singles}) == len(prompts)  # different continuations
    assert generate_batch(model, prompts, max_new_tokens=10) == singles
    assert generate_batch(model, prompts, max_new_tokens=10, pad_id=63) == singles
    stop = {singles[0][2], singles[2][0]}
    with_stop = [generate(model, p, max_new_tokens=10, stop_tokens=stop) for p in prompts]
    assert any(len(s) < 10 for s in with_stop)
    assert generate_batch(model, prompts, max_new_tokens=10, stop_tokens=stop) == with_stop
    model.train()
    generate_batch(model, prompts, max_new_tokens=1)
    assert model.training
