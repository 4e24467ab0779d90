"""A tunegen model as an lm-evaluation-harness `LM`, so its tasks run on a run's model.

    pip install tunegen[lm-eval]
    tunegen eval runs/lora --lm-eval-tasks hellaswag,arc_easy

`TunegenLM` answers the three request kinds every task is made of:

* `loglikelihood(context, continuation)`: the summed log-probability of the continuation's tokens
  after the context, and whether greedy decoding would have produced exactly them;
* `loglikelihood_rolling(text)`: the whole text's log-probability (perplexity tasks), scored in
  windows of `max_seq_len` tokens, each window seeing as much earlier text as fits;
* `generate_until(context, {until, max_gen_toks, ...})`: greedy generation with the KV cache,
  cut at the first stop string.

Texts are tokenized as lm-eval's own `HFLM` tokenizes them: BOS first where the tokenizer has one,
and a context's trailing spaces moved to the continuation, so the split falls between tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import Tensor, nn

from tunegen.runtime.generation import generate_batch
from tunegen.runtime.tokenizers.base import Tokenizer

__all__ = ["TunegenLM"]


class TunegenLM(LM):
    """lm-eval's model interface over a tunegen `Transformer` and its tokenizer."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        batch_size: int = 8,
        max_gen_toks: int = 256,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.max_length = model.max_seq_len

    # -- the three request kinds -----------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        pairs = [self._split(*request.args) for request in requests]
        return self._score(pairs)

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            tokens = self.tokenizer.encode(text, add_bos=False, add_eos=False)
            prefix = self._prefix_token()
            windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    token_list=tokens,
                    prefix_token=prefix,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            results.append(sum(logprob for logprob, _ in self._score(windows)))
        return results

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        answers = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.get("max_gen_toks", self.max_gen_toks))
            prompt = self._encode(context)[-self.max_length :]
            (new_ids,) = generate_batch(
                self.model,
                [prompt],
                max_new_tokens=max_new,
                stop_tokens={self.tokenizer.eos_id},
                pad_id=self.tokenizer.pad_id,
            )
            text = self.tokenizer.decode(new_ids)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            answers.append(text)
        return answers

    # -- helpers -----------------------------------------------------------------------------------

    def _prefix_token(self) -> int:
        bos = self.tokenizer.bos_id
        return self.tokenizer.eos_id if bos is None else bos

    def _encode(self, text: str) -> list[int]:
        """Ids of `text` after BOS (EOS when the tokenizer has no BOS, as HFLM does)."""
        return [self._prefix_token(), *self.tokenizer.encode(text, add_bos=False, add_eos=False)]

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids), tokenized together so the split is a token boundary."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        context_len = len(self._encode(context))
        return whole[:context_len], whole[context_len:]

    @torch.no_grad()
    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), greedy?) per pair, in batches."""
        results = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            # The model reads all but the last token; windows keep the end of long inputs.
            rows = [
                (context + continuation)[-(self.max_length + 1) :]
                for context, continuation in batch
            ]
            width = max(len(row) - 1 for row in rows)
            inputs = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
            for i, row in enumerate(rows):
                inputs[i, : len(row) - 1] = torch.tensor(row[:-1])
            device = next(self.model.parameters()).device
            logprobs = F.log_softmax(self.model(inputs.to(device)).float(), dim=-1).cpu()
            for i, (row, (_, continuation)) in enumerate(zip(rows, batch, strict=True)):
                results.append(_continuation_score(logprobs[i], row, len(continuation)))
        return results


def _continuation_score(logprobs: Tensor, row: list[int], n: int) -> tuple[float, bool]:
    """Score the last `n` tokens of `row` given the log-probabilities (T, V) of its positions."""
    targets = torch.tensor(row[-n:])  # (n,)
    positions = logprobs[len(row) - 1 - n : len(row) - 1]  # (n, V): each predicts the next token
    picked = positions.gather(-1, targets[:, None])[:, 0]
    return float(picked.sum()), bool((positions.argmax(-1) == targets).all())
