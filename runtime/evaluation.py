"""Evaluation on a data file: exact match of greedy answers, and perplexity.

Exact match: prompts are tokenized exactly as the training datasets tokenize them (instruct: BOS +
prompt, no EOS; chat: the template's generation prompt), so the model is asked the same way it
was taught; generation (batched, with the KV cache) stops at EOS or the template's end of turn.
Perplexity: exp of the token-weighted mean cross-entropy over the tokens that carry the loss in
training (the same dataset classes and masking), never packed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunegen.runtime.data.chat import chat_prompt_tokens, read_chat_examples
from tunegen.runtime.data.chat_templates import CHAT_TEMPLATES
from tunegen.runtime.data.collate import padded_collate
from tunegen.runtime.data.instruct import read_instruct_examples
from tunegen.runtime.generation import generate_batch
from tunegen.runtime.losses import CrossEntropyLoss
from tunegen.runtime.tokenizers.base import Tokenizer
from tunegen.runtime.tokenizers.sentencepiece import SentencePieceTokenizer

__all__ = [
    "EvalLoss",
    "exact_match",
    "exact_match_accuracy",
    "exact_match_examples",
    "loss_on",
    "stop_tokens_for",
]


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
    examples = exact_match_examples(tokenizer, source, data_format="instruct", template=template)
    return exact_match(
        model,
        tokenizer,
        examples[:max_samples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )


def exact_match_examples(
    tokenizer: Tokenizer, source: str | Path, *, data_format: str, template: str
) -> list[tuple[list[int], str]]:
    """(prompt ids, expected answer) per record of instruct or chat data `source`.

    Chat records are asked for their last assistant reply, given the conversation before it.
    """
    if data_format == "instruct":
        return [
            (tokenizer.encode(prompt, add_bos=True, add_eos=False), answer)
            for prompt, answer in read_instruct_examples(source, template=template)
        ]
    if data_format == "chat":
        return [
            (chat_prompt_tokens(tokenizer, messages, template=template), answer)
            for messages, answer in read_chat_examples(source)
        ]
    raise ValueError(f"exact match needs instruct or chat data, not {data_format!r}")


def stop_tokens_for(tokenizer: Tokenizer, template: str | None = None) -> set[int]:
    """EOS, plus the chat template's end-of-turn token where it is one token of its own."""
    stops = {tokenizer.eos_id}
    fmt = CHAT_TEMPLATES.get(template or "")
    if fmt is not None and "{" not in fmt.end_of_turn:
        token = tokenizer.token_to_id(fmt.end_of_turn)
        if token is not None:
            stops.add(token)
    elif template == "tokenizer":
        for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            token = tokenizer.token_to_id(name)
            if token is not None:
                stops.add(token)
    return stops


def exact_match(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[tuple[list[int], str]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    template: str | None = None,
) -> float:
    """Share of `examples` whose greedy answer equals the expected one (whitespace-trimmed).

    Prompts are batched by length, so rows share little padding; the order does not change any
    answer.
    """
    if not examples:
        raise ValueError("exact match needs at least one example")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    stops = stop_tokens_for(tokenizer, template)
    correct = 0
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start : start + batch_size]]
        outputs = generate_batch(
            model,
            [prompt for prompt, _ in batch],
            max_new_tokens=max_new_tokens,
            stop_tokens=stops,
            pad_id=tokenizer.pad_id,
        )
        for (_, answer), new_ids in zip(batch, outputs, strict=True):
            correct += tokenizer.decode(new_ids).strip() == answer.strip()
    return correct / len(examples)


@dataclass(frozen=True)
class EvalLoss:
    """Token-weighted mean cross-entropy over `tokens` loss-carrying tokens, and its exp."""

    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf


@torch.no_grad()
def loss_on(
    model: nn.Module, examples: Sequence[dict[str, list[int]]], *, pad_id: int, batch_size: int = 8
) -> EvalLoss:
    """The loss of `model` on tokenized examples (a training dataset's items), as training
    computes it: summed over the label tokens of every batch, divided by their count."""
    device = next(model.parameters()).device
    loss_fn = CrossEntropyLoss()
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = padded_collate(examples[start : start + batch_size], pad_id=pad_id)
            logits = model(batch["tokens"].to(device))  # (B, T, V)
            loss_sum, num_tokens = loss_fn(logits, batch["labels"].to(device))
            total += loss_sum.double().cpu()
            count += int(num_tokens)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no tokens carry the loss in these examples")
    return EvalLoss(loss=float(total / count), tokens=count)
