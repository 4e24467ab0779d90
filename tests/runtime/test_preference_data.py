"""Preference data for DPO: record forms, loss on the responses only, truncation, batching.

Plain records use the bundled sentencepiece tokenizer; chat records use tiny byte-level BPEs built
here with the `tokenizers` library and saved as Hugging Face dirs (no transformers needed). The
reference for the ids is the instruct and chat code that `PreferenceDataset` shares.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import load_script
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from tunegen.runtime.data import (
    IGNORE_INDEX,
    ChatDataset,
    InstructDataset,
    PreferenceDataset,
    preference_collate,
    read_records,
)
from tunegen.runtime.errors import DataError, TokenizerError
from tunegen.runtime.tokenizers import SentencePieceTokenizer, builtin_tokenizer_path
from tunegen.runtime.tokenizers.base import Tokenizer
from tunegen.runtime.tokenizers.hf_json import HFTokenizer

REPO = Path(__file__).resolve().parents[2]

PLAIN = {"prompt": "Reverse the words. cat dog", "chosen": "dog cat", "rejected": "cat dog"}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
QUESTION = {"role": "user", "content": "What is 2 plus 2?"}
CHOSEN, REJECTED = "It is 4.", "Paris, of course."
REPLY = {"role": "assistant", "content": "Four."}
FOLLOW_UP = {"role": "user", "content": "Say it in a sentence."}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


PROMPT = [SYSTEM, QUESTION]
SHARED_TURNS = {"chosen": [*PROMPT, assistant(CHOSEN)], "rejected": [*PROMPT, assistant(REJECTED)]}
TRL = {"prompt": PROMPT, "chosen": [assistant(CHOSEN)], "rejected": [assistant(REJECTED)]}
TRL_STRINGS = {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
MULTI_TURN = [SYSTEM, QUESTION, REPLY, FOLLOW_UP]

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# template -> (tokenizer, text that ends an assistant turn)
CHAT_CASES = {
    "llama3": ("llama3", "<|eot_id|>"),
    "chatml": ("chatml", "<|im_end|>"),
    "alpaca": ("chatml", "<|im_end|>"),  # the alpaca chat template ends a reply with EOS
    "tokenizer": ("chatml", "<|im_end|>"),
}


def _hf_tokenizer(
    folder: Path, *, specials: list[str], bos: str | None, eos: str, chat_template: str | None
) -> HFTokenizer:
    """A byte-level BPE with `specials` as added tokens, saved as a Hugging Face dir."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [f"{SYSTEM['content']} {QUESTION['content']} {CHOSEN} {REJECTED} system user"] * 20
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=alphabet
    )
    backend.train_from_iterator(corpus, trainer)
    if bos is not None:
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, bos_id)]
        )
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    config = {"bos_token": bos, "eos_token": eos, "chat_template": chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return HFTokenizer(folder)


@pytest.fixture(scope="module")
def sp() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(builtin_tokenizer_path())


@pytest.fixture(scope="module")
def toks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HFTokenizer]:
    root = tmp_path_factory.mktemp("tokenizers")
    llama3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
    return {
        "llama3": _hf_tokenizer(
            root / "llama3",
            specials=[*llama3, "<|eot_id|>"],
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            chat_template=None,
        ),
        "chatml": _hf_tokenizer(
            root / "chatml",
            specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            bos=None,
            eos="<|im_end|>",
            chat_template=CHATML_JINJA,
        ),
    }


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def loss_runs(tok: Tokenizer, tokens: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each maximal run of positions that carry the loss."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(tokens, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token  # unshifted labels
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tok.decode(run, skip_special_tokens=False) for run in runs]


def prompt_tokens(tokens: list[int], labels: list[int]) -> list[int]:
    """The tokens before the first one that carries the loss."""
    return tokens[: next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)]


def check_pair(tok: Tokenizer, item: dict[str, list[int]], chosen: str, rejected: str, end: str):
    """Loss on exactly each response and its end token; the same prompt tokens before both."""
    assert loss_runs(tok, item["chosen_tokens"], item["chosen_labels"]) == [chosen + end]
    assert loss_runs(tok, item["rejected_tokens"], item["rejected_labels"]) == [rejected + end]
    assert prompt_tokens(item["chosen_tokens"], item["chosen_labels"]) == prompt_tokens(
        item["rejected_tokens"], item["rejected_labels"]
    )


def error(path: Path, message: str) -> str:
    """A regex matching exactly `'<path>:' + message`."""
    return f"^{re.escape(str(path))}:{re.escape(message)}$"


# -- plain records -------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["alpaca", "plain"])
def test_plain_records_are_tokenized_as_instruct_data(
    template: str, sp: SentencePieceTokenizer, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN])
    item = PreferenceDataset(sp, source=path, template=template, max_seq_len=512)[0]
    check_pair(sp, item, PLAIN["chosen"], PLAIN["rejected"], "</s>")
    for side in ("chosen", "rejected"):
        instruct = write_jsonl(
            tmp_path / f"{side}.jsonl", [{"instruction": PLAIN["prompt"], "output": PLAIN[side]}]
        )
        expected = InstructDataset(sp, source=instruct, template=template, max_seq_len=512)[0]
        assert item[f"{side}_tokens"] == expected["tokens"]
        assert item[f"{side}_labels"] == expected["labels"]


@pytest.mark.parametrize("template", ["llama3", "chatml"])
def test_plain_records_with_a_chat_template_are_one_user_turn(
    template: str, toks: dict[str, HFTokenizer], tmp_path: Path
) -> None:
    tok = toks[template]
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN])
    item = PreferenceDataset(tok, source=path, template=template, max_seq_len=512)[0]
    check_pair(tok, item, PLAIN["chosen"], PLAIN["rejected"], CHAT_CASES[template][1])
    user = {"role": "user", "content": PLAIN["prompt"]}
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user, assistant(PLAIN["chosen"])]}])
    expected = ChatDataset(tok, source=chat, template=template, max_seq_len=512)[0]
    assert (item["chosen_tokens"], item["chosen_labels"]) == (
        expected["tokens"],
        expected["labels"],
    )


# -- chat records --------------------------------------------------------------------------------


@pytest.mark.parametrize("template", list(CHAT_CASES))
def test_chat_forms_put_the_loss_on_the_response_and_its_end_token(
    template: str, toks: dict[str, HFTokenizer], tmp_path: Path
) -> None:
    tok_name, end = CHAT_CASES[template]
    tok = toks[tok_name]
    path = write_jsonl(tmp_path / "pairs.jsonl", [SHARED_TURNS, TRL, TRL_STRINGS])
    ds = PreferenceDataset(tok, source=path, template=template, max_seq_len=512)
    assert (len(ds), ds.num_dropped) == (3, 0)
    check_pair(tok, ds[0], CHOSEN, REJECTED, end)
    assert ds[0] == ds[1] == ds[2]  # the three forms of one pair
    # The ids are ChatDataset's for the whole conversation.
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": SHARED_TURNS["rejected"]}])
    expected = ChatDataset(tok, source=chat, template=template, max_seq_len=512)[0]
    assert ds[0]["rejected_tokens"] == expected["tokens"]
    assert ds[0]["rejected_labels"] == expected["labels"]


@pytest.mark.parametrize("template", ["llama3", "tokenizer"])
def test_earlier_replies_are_context(
    template: str, toks: dict[str, HFTokenizer], tmp_path: Path
) -> None:
    tok_name, end = CHAT_CASES[template]
    tok = toks[tok_name]
    record = {"prompt": MULTI_TURN, "chosen": CHOSEN, "rejected": REJECTED}
    path = write_jsonl(tmp_path / "pairs.jsonl", [record])
    item = PreferenceDataset(tok, source=path, template=template, max_seq_len=512)[0]
    check_pair(tok, item, CHOSEN, REJECTED, end)  # no loss on REPLY, the earlier answer
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [*MULTI_TURN, assistant(CHOSEN)]}])
    expected = ChatDataset(tok, source=chat, template=template, max_seq_len=512)[0]
    assert item["chosen_tokens"] == expected["tokens"]
    assert loss_runs(tok, expected["tokens"], expected["labels"]) == [
        REPLY["content"] + end,
        CHOSEN + end,
    ]


def test_chat_records_need_a_chat_template(sp: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN, TRL])
    with pytest.raises(
        DataError,
        match=error(
            path,
            "2: chat records need a chat template (alpaca, chatml, llama3, mistral, tokenizer), "
            "not the prompt template 'plain'",
        ),
    ):
        PreferenceDataset(sp, source=path, template="plain", max_seq_len=512)


def test_chat_template_checks_the_tokenizer_only_for_chat_records(
    sp: SentencePieceTokenizer, tmp_path: Path
) -> None:
    # `alpaca` is both a prompt template (plain records) and a chat template, which needs EOS
    # written as text: the sentencepiece tokenizer cannot read "</s>" back as its EOS id.
    plain = write_jsonl(tmp_path / "plain.jsonl", [PLAIN])
    assert len(PreferenceDataset(sp, source=plain, template="alpaca", max_seq_len=512)) == 1
    chat = write_jsonl(tmp_path / "chat.jsonl", [PLAIN, TRL])
    with pytest.raises(TokenizerError, match="chat template 'alpaca' writes the tokenizer's EOS"):
        PreferenceDataset(sp, source=chat, template="alpaca", max_seq_len=512)


def test_template_errors_name_the_record(toks: dict[str, HFTokenizer], tmp_path: Path) -> None:
    record = {"prompt": [QUESTION, QUESTION], "chosen": CHOSEN, "rejected": REJECTED}
    path = write_jsonl(tmp_path / "pairs.jsonl", [TRL, record])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: chat template 'mistral' "):
        PreferenceDataset(toks["llama3"], source=path, template="mistral", max_seq_len=512)


def test_unknown_template(sp: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN])
    with pytest.raises(ValueError, match=r"^unknown template 'vicuna' for preference data"):
        PreferenceDataset(sp, source=path, template="vicuna", max_seq_len=512)


# -- truncation ----------------------------------------------------------------------------------


def test_truncation_keeps_the_start_and_drops_pairs_without_a_response(
    sp: SentencePieceTokenizer, tmp_path: Path
) -> None:
    long = {**PLAIN, "prompt": "Repeat after me: " + "cat " * 40}
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN, long])
    full = PreferenceDataset(sp, source=path, template="plain", max_seq_len=4096)
    assert (len(full), full.num_dropped) == (2, 0)
    cut = len(prompt_tokens(full[0]["chosen_tokens"], full[0]["chosen_labels"])) + 1
    short = PreferenceDataset(
        sp, source=path, template="plain", max_seq_len=cut, max_dropped_fraction=0.5
    )
    assert (len(short), short.num_dropped, short.lines) == (1, 1, [1])
    assert short.dropped[0].line == 2
    assert short.dropped[0].reason.startswith(
        f"a response has no token that carries loss within max_seq_len={cut} (chosen "
    )
    assert short[0] == {key: value[:cut] for key, value in full[0].items()}
    with pytest.raises(
        DataError,
        match=f"^data file '{re.escape(str(path))}': all 2 records are longer than "
        "max_seq_len=3 before their responses start$",
    ):
        PreferenceDataset(sp, source=path, template="plain", max_seq_len=3)


def test_max_seq_len_must_be_at_least_2(sp: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [PLAIN])
    with pytest.raises(ValueError, match="max_seq_len must be at least 2, got 1"):
        PreferenceDataset(sp, source=path, template="plain", max_seq_len=1)


# -- bad records ---------------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
        (
            {"prompt": "p", "chosen": 1, "rejected": "b"},
            "field 'chosen' must be a string, got number",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": [assistant("b")]},
            "field 'rejected' must be a string, got array",
        ),
        (
            {"prompt": None, "chosen": "a", "rejected": "b"},
            "field 'prompt' must be a string or an array of messages, got null",
        ),
        (
            {"prompt": [USER], "chosen": {"a": 1}, "rejected": "b"},
            "field 'chosen' must be a string or an array of messages, got object",
        ),
        (
            {"prompt": [USER], "chosen": "a", "rejected": [USER]},
            "field 'rejected' must hold exactly one message, from the assistant",
        ),
        (
            {"prompt": [USER], "chosen": [assistant("a"), assistant("b")], "rejected": "b"},
            "field 'chosen' must hold exactly one message, from the assistant",
        ),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, "field 'prompt' has no messages"),
        (
            {"prompt": ["hi"], "chosen": "a", "rejected": "b"},
            "field 'prompt': message 1 must be an object, got string",
        ),
        (
            {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
            "field 'prompt': message 1 has no 'content'",
        ),
        (
            {"prompt": [USER, {"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
            "field 'prompt': message 2: unknown role 'bot' (known: system, user, assistant)",
        ),
        (
            {"prompt": [{"role": "user", "content": 3}], "chosen": "a", "rejected": "b"},
            "field 'prompt': message 1: 'content' must be a string, got number",
        ),
        (
            {"chosen": [USER, assistant("a")], "rejected": "b"},
            "field 'rejected' must be an array of messages, got string",
        ),
        (
            {"chosen": [USER, assistant("a")], "rejected": [USER]},
            "field 'rejected' must end with an assistant message (the response)",
        ),
        (
            {"chosen": [USER, assistant("a")], "rejected": [QUESTION, assistant("b")]},
            "fields 'chosen' and 'rejected' must share every message but the last",
        ),
        (
            {"chosen": [USER, assistant("a")], "rejected": []},
            "field 'rejected' has no messages",
        ),
    ],
)
def test_bad_records_name_their_line_and_field(
    toks: dict[str, HFTokenizer], tmp_path: Path, record: dict[str, Any], message: str
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PLAIN) + "\n\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=error(path, "3: " + message)):
        PreferenceDataset(toks["chatml"], source=path, template="chatml", max_seq_len=512)


# -- batching ------------------------------------------------------------------------------------


def test_collate_puts_chosen_rows_first_and_pads_to_the_longest() -> None:
    pairs = [
        {
            "chosen_tokens": [1, 2, 3],
            "chosen_labels": [-100, 2, 3],
            "rejected_tokens": [1, 2, 4, 5, 6],
            "rejected_labels": [-100, 2, 4, 5, 6],
        },
        {
            "chosen_tokens": [7, 8],
            "chosen_labels": [-100, 8],
            "rejected_tokens": [7, 9],
            "rejected_labels": [-100, 9],
        },
    ]
    batch = preference_collate(pairs, pad_id=0)
    assert batch["tokens"].tolist() == [
        [1, 2, 3, 0, 0],
        [7, 8, 0, 0, 0],
        [1, 2, 4, 5, 6],
        [7, 9, 0, 0, 0],
    ]
    assert batch["labels"].tolist() == [
        [-100, 2, 3, -100, -100],
        [-100, 8, -100, -100, -100],
        [-100, 2, 4, 5, 6],
        [-100, 9, -100, -100, -100],
    ]
    assert batch["tokens"].dtype == batch["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="empty batch"):
        preference_collate([], pad_id=0)


# -- the demo pairs ------------------------------------------------------------------------------


def test_demo_preference_data_is_sound(sp: SentencePieceTokenizer) -> None:
    tasks = load_script("make_tiny_assets").TASKS
    pairs = read_records(REPO / "specs/data/demo_preference.jsonl")
    heldout = read_records(REPO / "specs/data/demo_heldout.jsonl")
    assert len(pairs) == 1000
    assert len({r["prompt"] for r in pairs}) == len(pairs)
    unseen = {f"{r['instruction']} {r['input']}".strip() for r in heldout}
    assert not unseen & {r["prompt"] for r in pairs}
    for r in pairs:
        instruction = next(i for i in tasks if r["prompt"].startswith(f"{i} "))
        task, text = tasks[instruction], r["prompt"][len(instruction) + 1 :]
        items = text.split(task.separator) if task.separator else list(text)
        assert r["chosen"] == task.separator.join(task.answer(items))
        assert r["rejected"] != r["chosen"]
    ds = PreferenceDataset(
        sp, source=REPO / "specs/data/demo_preference.jsonl", template="alpaca", max_seq_len=64
    )
    assert (len(ds), ds.num_dropped) == (1000, 0)
