"""Reward functions for specs/grpo.yaml: the demo's word tasks, scored against their answers.

A reward function takes the prompts, the sampled completions and, as keyword arguments, the
prompt records' other fields (here `answer`, and `input` where a record has one), one value per
completion; it returns one number per completion. Both rewards are easy to check by hand.
"""

from __future__ import annotations


def exact_match(
    prompts: list, completions: list[str], answer: list[str], **fields: object
) -> list[float]:
    """1.0 when the completion is the answer (surrounding whitespace ignored), else 0.0."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]


def word_overlap(
    prompts: list, completions: list[str], answer: list[str], **fields: object
) -> list[float]:
    """Share of the answer's words that the completion has at the same position, less a penalty
    for extra words: partial credit that points towards the exact answer."""
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        got, want = completion.split(), expected.split()
        same = sum(g == w for g, w in zip(got, want, strict=False))
        extra = max(len(got) - len(want), 0)
        scores.append(max(same - extra, 0) / max(len(want), 1))
    return scores
