"""Exact-match evaluation: does greedy generation reproduce the expected answer?

Prompts are tokenized exactly as `InstructDataset` tokenizes them for training (BOS + prompt, no
EOS), so the model is asked the same way it was taught; generation stops at EOS.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunegen.runtime.data.instruct import read_instruct_examples
from tunegen.runtime.generation import generate_batch
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer

__all__ = ["exact_match_accuracy"]


def exact_match_accuracy(
    model: nn.Module,
    tokenizer: SentencePieceTokenizer,
    *,
    source: str | Path,
    template: str,
    max_samples: int | None,
    max_new_tokens: int,
    batch_size: int = 32,
) -> float:
    """Share of the first `max_samples` records of `source` answered exactly (whitespace-trimmed)."""
    examples = read_instruct_examples(source, template=template)[:max_samples]
    correct = 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompts = [tokenizer.encode(prompt, add_bos=True, add_eos=False) for prompt, _ in batch]
        outputs = generate_batch(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            stop_tokens={tokenizer.eos_id},
            pad_id=tokenizer.pad_id,
        )
        for (_, answer), new_ids in zip(batch, outputs, strict=True):
            correct += tokenizer.decode(new_ids).strip() == answer.strip()
    return correct / len(examples)
