"""The KV cache: cached decoding computes what the uncached model computes, for every supported
architecture's shape, and greedy tokens equal transformers' own `generate`."""

from __future__ import annotations

import pytest
import torch

from tunegen.runtime import load_model
from tunegen.runtime.generation import generate_batch
from tunegen.runtime.models import Transformer

transformers = pytest.importorskip("transformers")
from helpers import HF_TEST_SIZES  # noqa: E402 (after the importorskip)

ARCHITECTURES = {
    "llama": lambda: transformers.LlamaConfig(**HF_TEST_SIZES, tie_word_embeddings=True),
    "qwen2": lambda: transformers.Qwen2Config(**HF_TEST_SIZES, use_sliding_window=False),
    "qwen3": lambda: transformers.Qwen3Config(**HF_TEST_SIZES, head_dim=32),
    "phi3": lambda: transformers.Phi3Config(
        **HF_TEST_SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2
    ),
}
PROMPTS = [[5, 9, 33, 70, 2, 101, 18], [44], [7, 7, 120, 3], list(range(60, 80))]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def models(request, tmp_path_factory) -> tuple[object, Transformer]:
    """(the transformers model, ours loaded from its saved checkpoint) for one architecture.

    Weights are drawn at std 0.3 (not HF's 0.02, whose near-uniform logits repeat one token), so
    greedy outputs vary and a wrong position or mask changes them.
    """
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(ARCHITECTURES[request.param]()).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.ndim == 2:
                param.normal_(std=0.3)
            elif name.endswith(".bias"):
                param.normal_(std=0.1)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, load_model(folder).eval()


def uncached_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by re-running the whole sequence each step (no cache)."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt) :]


def test_cached_logits_equal_uncached_for_left_padded_rows(models) -> None:
    _, model = models
    cache = model.new_kv_cache([max(map(len, PROMPTS)) - len(p) for p in PROMPTS], 40)
    longest = max(map(len, PROMPTS))
    batch = torch.tensor([[0] * (longest - len(p)) + p for p in PROMPTS])
    extra = torch.tensor([[11, 12], [13, 14], [15, 16], [17, 18]])
    with torch.no_grad():
        prefill = model(batch, cache=cache, logits_to_keep=1)[:, -1]  # (B, V)
        step = model(extra, cache=cache)  # two tokens at once, (B, 2, V)
        for row, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt + extra[row].tolist()]))[0]  # (T, V)
            torch.testing.assert_close(prefill[row], alone[len(prompt) - 1], atol=1e-4, rtol=0)
            torch.testing.assert_close(step[row], alone[-2:], atol=1e-4, rtol=0)
    assert cache.length == longest + 2


def test_greedy_with_cache_equals_without(models) -> None:
    _, model = models
    expected = [uncached_greedy(model, p, 16) for p in PROMPTS]
    assert len({tuple(e) for e in expected}) == len(PROMPTS)  # varied outputs
    assert all(len(set(e)) > 3 for e in expected)
    assert generate_batch(model, PROMPTS, max_new_tokens=16, pad_id=3) == expected


def test_greedy_equals_transformers_generate(models) -> None:
    hf, model = models
    for prompt in PROMPTS:
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert generate_batch(model, [prompt], max_new_tokens=16) == [
            out[0, len(prompt) :].tolist()
        ]


def test_cache_past_its_length_is_refused(models) -> None:
    _, model = models
    cache = model.new_kv_cache([0], 4)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache=cache)
        with pytest.raises(ValueError, match="exceeds the cache max_len 4"):
            model(torch.tensor([[4, 5]]), cache=cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model.new_kv_cache([0], model.max_seq_len + 1)
