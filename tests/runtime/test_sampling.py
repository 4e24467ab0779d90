"""Sampling (`sample`, `sample_next`): determinism, the filters, and agreement with greedy."""

from __future__ import annotations

import pytest
import torch

from tunegen.runtime.generation import generate, generate_batch, sample, sample_next
from tunegen.runtime.models import Transformer, llama

PROMPTS = [[3, 17, 5, 42, 8, 1], [9], [60, 2, 33], list(range(30, 44))]


def small(max_seq_len: int) -> Transformer:
    """A tiny model with large random weights, so greedy outputs vary (as in test_generation)."""
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
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.3)
    return model.eval()


def test_temperature_zero_is_greedy() -> None:
    model = small(max_seq_len=24)
    expected = generate_batch(model, PROMPTS, max_new_tokens=8)
    assert sample(model, PROMPTS, max_new_tokens=8, temperature=0) == expected
    # top_k=1 and a tiny top_p leave only the argmax, whatever the temperature.
    gen = torch.Generator().manual_seed(0)
    assert sample(model, PROMPTS, max_new_tokens=8, top_k=1, generator=gen) == expected
    assert sample(model, PROMPTS, max_new_tokens=8, top_p=1e-6, generator=gen) == expected


def test_same_generator_seed_same_tokens_and_global_rng_untouched() -> None:
    model = small(max_seq_len=24)
    state = torch.get_rng_state()

    def draw(seed: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return sample(model, PROMPTS, max_new_tokens=10, temperature=1.5, generator=gen)

    first = draw(1)
    assert draw(1) == first
    assert draw(2) != first
    assert torch.equal(torch.get_rng_state(), state)
    assert all(len(row) == 10 for row in first)
    assert first != generate_batch(model, PROMPTS, max_new_tokens=10)  # really random


def test_rows_stop_independently_and_mode_is_restored() -> None:
    model = small(max_seq_len=24)
    greedy = [generate(model, p, max_new_tokens=10) for p in PROMPTS]
    stop = {greedy[0][2]}
    out = sample(model, PROMPTS, max_new_tokens=10, temperature=0, stop_tokens=stop)
    assert out == [generate(model, p, max_new_tokens=10, stop_tokens=stop) for p in PROMPTS]
    assert len(out[0]) == 2 and any(len(row) == 10 for row in out)
    model.train()
    sample(model, PROMPTS, max_new_tokens=1)
    assert model.training


def frequencies(logits: torch.Tensor, n: int = 20000, **kwargs: object) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1), generator=gen, **kwargs)
    return torch.bincount(draws, minlength=logits.shape[-1]).float() / n


def test_sample_next_matches_the_filtered_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    probs = (logits[0] / 0.7).softmax(-1)
    assert torch.allclose(frequencies(logits, temperature=0.7), probs, atol=0.015)
    top2 = probs[:2] / probs[:2].sum()
    assert torch.allclose(frequencies(logits, temperature=0.7, top_k=2)[:2], top2, atol=0.015)
    assert frequencies(logits, temperature=0.7, top_k=2)[2:].sum() == 0
    # Nucleus: the smallest prefix reaching top_p, here the first three tokens.
    p = logits[0].softmax(-1)
    top_p = float(p[:2].sum() + p[2] / 2)
    nucleus = frequencies(logits, top_p=top_p)
    assert nucleus[3:].sum() == 0
    assert torch.allclose(nucleus[:3], p[:3] / p[:3].sum(), atol=0.015)


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}]
)
def test_sample_next_refuses_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="need temperature"):
        sample_next(torch.zeros(1, 4), **kwargs)
