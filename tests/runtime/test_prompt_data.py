"""Prompt data for GRPO: tokenized as the SFT data taught the model, with the rewards' fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_chat_data import dirs  # noqa: F401 (a fixture: tokenizer dirs per template)

from tunegen.runtime.data.chat import chat_prompt_tokens
from tunegen.runtime.data.prompts import PromptDataset, prompt_collate
from tunegen.runtime.data.templates import ALPACA
from tunegen.runtime.errors import DataError
from tunegen.runtime.tokenizers import builtin_tokenizer
from tunegen.runtime.tokenizers.hf_json import HFTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer("tiny")


def _write(tmp_path: Path, records: list) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plain_prompts_are_tokenized_as_instruct_prompts(tokenizer, tmp_path: Path) -> None:
    source = _write(
        tmp_path,
        [
            {"prompt": "Reverse the words.", "input": "a b", "answer": "b a"},
            {"prompt": "Say hi.", "answer": "hi", "id": 7},
        ],
    )
    data = PromptDataset(tokenizer, source=source, max_seq_len=128, max_new_tokens=8)
    assert len(data) == 2 and data.lines == [1, 2]
    expected = tokenizer.encode(ALPACA.prompt("Reverse the words.", "a b"), add_eos=False)
    assert data[0]["prompt_ids"] == expected and expected[0] == tokenizer.bos_id
    assert data[0]["prompt"] == "Reverse the words."
    # Every item has every field (None where a record lacks it): the rewards get full columns.
    assert data[0]["fields"] == {"answer": "b a", "id": None, "input": "a b"}
    assert data[1]["fields"] == {"answer": "hi", "id": 7, "input": None}
    batch = prompt_collate([data[0], data[1]])
    assert batch["prompts"] == ["Reverse the words.", "Say hi."]
    assert batch["fields"]["answer"] == ["b a", "hi"]
    assert batch["prompt_ids"][0] == expected


def test_chat_prompts_end_with_the_generation_prompt(request, tmp_path: Path) -> None:
    chatml = HFTokenizer(request.getfixturevalue("dirs")["chatml"])
    messages = [{"role": "user", "content": "Say hi."}]
    source = _write(tmp_path, [{"messages": messages, "answer": "hi"}, {"prompt": "Say yo."}])
    data = PromptDataset(
        chatml, source=source, template="chatml", max_seq_len=128, max_new_tokens=8
    )
    assert data[0]["prompt_ids"] == chat_prompt_tokens(chatml, messages, template="chatml")
    text = chatml.decode(data[0]["prompt_ids"], skip_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\n"), text
    assert data[0]["prompt"] == messages and data[0]["fields"] == {"answer": "hi"}
    # A plain prompt with a chat template is one user message.
    as_chat = [{"role": "user", "content": "Say yo."}]
    assert data[1]["prompt_ids"] == chat_prompt_tokens(chatml, as_chat, template="chatml")


def test_prompts_without_room_to_answer_are_dropped(tokenizer, tmp_path: Path) -> None:
    records = [{"prompt": f"say {i}"} for i in range(9)] + [{"prompt": "word " * 60}]
    data = PromptDataset(
        tokenizer,
        source=_write(tmp_path, records),
        template="plain",
        max_seq_len=64,
        max_new_tokens=16,
        max_dropped_fraction=0.2,
    )
    assert len(data) == 9
    assert data.dropped[0].line == 10
    assert "leave no room for max_new_tokens=16 within max_seq_len=64" in data.dropped[0].reason


def test_bad_records_are_listed(tokenizer, tmp_path: Path) -> None:
    source = _write(tmp_path, [{"answer": "x"}, {"prompt": 3}, {"prompt": "ok"}])
    with pytest.raises(DataError) as error:
        PromptDataset(tokenizer, source=source, max_seq_len=64, max_new_tokens=8)
    lines = str(error.value).splitlines()
    assert lines[0].endswith(
        "prompts.jsonl:1: a prompt record needs a 'prompt' or a 'messages' field, found neither"
    )
    assert lines[1].endswith("prompts.jsonl:2: field 'prompt' must be a string, got number")
