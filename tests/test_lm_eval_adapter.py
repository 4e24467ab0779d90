"""The lm-evaluation-harness adapter: its scores by hand, and a local task through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import cli_in_process

from tunegen.runtime import load_model
from tunegen.runtime.tokenizers import builtin_tokenizer

pytest.importorskip("lm_eval")
from tunegen.runtime.lm_eval_adapter import TunegenLM

TASK = """\
task: tunegen_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
DOCS = [
    {"question": "The cat sat on the", "choices": ["mat", "moon"], "answer": 0},
    {"question": "One, two,", "choices": ["three", "blue"], "answer": 0},
    {"question": "Red, green,", "choices": ["blue", "seven"], "answer": 1},
]


def request(*args: object) -> SimpleNamespace:
    return SimpleNamespace(args=args)


def test_loglikelihood_is_the_summed_log_probability_of_the_continuation() -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny").eval(), builtin_tokenizer("tiny")
    lm = TunegenLM(model, tokenizer, batch_size=2)
    pairs = [("The cat sat on the", " mat"), ("One, two, ", "three"), ("Hi", " there you")]
    scores = lm.loglikelihood([request(*pair) for pair in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, scores, strict=True):
        context, continuation = context.rstrip(), context[len(context.rstrip()) :] + continuation
        whole = tokenizer.encode(context + continuation, add_bos=True, add_eos=False)
        n = len(whole) - len(tokenizer.encode(context, add_bos=True, add_eos=False))
        with torch.no_grad():
            logprobs = model(torch.tensor([whole[:-1]]))[0].log_softmax(-1)  # (T-1, V)
        targets = torch.tensor(whole[-n:])
        expected = logprobs[-n:].gather(-1, targets[:, None]).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-4)
        assert greedy == bool((logprobs[-n:].argmax(-1) == targets).all())
    rolling = lm.loglikelihood_rolling([request("a b c d")])[0]
    ids = tokenizer.encode("a b c d", add_bos=True, add_eos=False)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
    expected = logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).sum()
    assert rolling == pytest.approx(float(expected), abs=1e-4)


def test_a_local_task_through_tunegen_eval(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local_mc.yaml").write_text(TASK.format(data=data))
    status, out, err = cli_in_process(
        "eval", "tiny", "--lm-eval-tasks", "tunegen_local_mc", "--lm-eval-include", str(tasks),
        "--json",
    )  # fmt: skip
    assert status == 0, err
    metrics = json.loads(out.splitlines()[-1])["lm_eval"]["tunegen_local_mc"]
    assert metrics["acc"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert metrics["acc_stderr"] >= 0
