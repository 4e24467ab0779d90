"""Data loading: records, templates, loss masks, batching, resumable order, and the demo assets."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from helpers import load_script

from tunegen.runtime.data import (
    IGNORE_INDEX,
    PROMPT_TEMPLATES,
    InstructDataset,
    ResumableSampler,
    TextDataset,
    padded_collate,
    read_instruct_examples,
    read_numbered_records,
    read_records,
)
from tunegen.runtime.errors import DataError
from tunegen.runtime.tokenizers import SentencePieceTokenizer, builtin_tokenizer_path

REPO = Path(__file__).resolve().parents[2]
RECORDS = [
    {"instruction": "Reverse the words.", "input": "cat dog", "output": "dog cat"},
    {"instruction": "Repeat after me: sun", "output": "sun"},
]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(builtin_tokenizer_path())


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def two_records(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "two.jsonl", [json.dumps(r) for r in RECORDS])


def error(path: Path, message: str) -> str:
    """A regex matching exactly `'<path>:' + message`."""
    return f"^{re.escape(str(path))}{re.escape(message)}$"


# -- reading records ---------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ['{"a": 1}', "", "   ", '{"a": 2}'])
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert [r.line for r in read_numbered_records(path)] == [1, 4]


def test_json_list_keeps_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": 2,\n   "b": 3}\n]\n', encoding="utf-8")
    assert [(r.line, r.record) for r in read_numbered_records(path)] == [
        (2, {"a": 1}),
        (4, {"a": 2, "b": 3}),
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=f"^data file '{re.escape(str(path))}' not found$"):
        read_records(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.csv", ["a,b"])
    with pytest.raises(DataError, match=r"must end in \.jsonl or \.json$"):
        read_records(path)


def test_bad_json_line_reports_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ['{"a": 1}', "", '{"a": 1 "b": 2}'])
    with pytest.raises(
        DataError, match=error(path, ":3: not valid JSON (Expecting ',' delimiter)")
    ):
        read_records(path)


def test_bad_json_in_a_list_reports_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n{"a": 1},\n{"a": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=error(path, ":3: not valid JSON (Expecting value)")):
        read_records(path)


def test_json_file_must_hold_a_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(
        DataError, match=error(path, ":1: a .json data file must hold a list of records")
    ):
        read_records(path)


def test_record_must_be_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ['{"a": 1}', "[1, 2]"])
    with pytest.raises(
        DataError, match=error(path, ":2: a record must be a JSON object, got array")
    ):
        read_records(path)


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_data_set(tmp_path: Path, content: str) -> None:
    path = tmp_path / ("d.json" if content == "[]" else "d.jsonl")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=f"^data file '{re.escape(str(path))}' has no records$"):
        read_records(path)


def test_invalid_utf8_reports_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=error(path, ":2: not valid UTF-8")):
        read_records(path)


def test_a_string_holding_u2028_is_one_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"a": "x\u2028y"}, ensure_ascii=False)])
    assert read_records(path) == [{"a": "x\u2028y"}]


# -- templates ---------------------------------------------------------------------------------


def test_alpaca_template_text() -> None:
    alpaca = PROMPT_TEMPLATES["alpaca"]
    prompt, response = alpaca.format(RECORDS[0])
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nReverse the words.\n\n### Input:\ncat dog\n\n### Response:\n"
    )
    assert response == "dog cat"
    # No input, or an empty or null one, selects the without-input variant.
    for record in (RECORDS[1], {**RECORDS[1], "input": ""}, {**RECORDS[1], "input": None}):
        assert alpaca.format(record)[0] == (
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nRepeat after me: sun\n\n### Response:\n"
        )


def test_plain_template_text() -> None:
    plain = PROMPT_TEMPLATES["plain"]
    assert plain.format(RECORDS[0]) == ("Reverse the words.\ncat dog\n", "dog cat")
    assert plain.format(RECORDS[1]) == ("Repeat after me: sun\n", "sun")


def test_braces_in_records_are_kept_verbatim() -> None:
    record = {"instruction": "Say {input}", "input": "{0}", "output": "{}"}
    assert PROMPT_TEMPLATES["plain"].format(record) == ("Say {input}\n{0}\n", "{}")


# -- instruction data set ----------------------------------------------------------------------


def _parts(tok: SentencePieceTokenizer, record: dict, template: str = "plain") -> tuple[list, list]:
    prompt, response = PROMPT_TEMPLATES[template].format(record)
    return tok.encode(prompt, add_eos=False), tok.encode(response, add_bos=False)


def test_labels_mask_the_prompt(tok: SentencePieceTokenizer, two_records: Path) -> None:
    ds = InstructDataset(tok, source=str(two_records), template="plain", max_seq_len=64)
    assert len(ds) == 2 and ds.num_dropped == 0
    for i, record in enumerate(RECORDS):
        prompt, response = _parts(tok, record)
        item = ds[i]
        assert item["tokens"] == prompt + response
        assert item["tokens"][0] == tok.bos_id and item["tokens"][-1] == tok.eos_id
        assert item["labels"] == [IGNORE_INDEX] * len(prompt) + response
    # Spelled out for the first record: BOS and 9 prompt ids carry no loss ("▁Re ver se ▁the
    # ▁words .\n cat ▁dog \n"), then "▁dog ▁cat </s>" do.
    assert len(_parts(tok, RECORDS[0])[0]) == 10
    assert ds[0]["labels"][:10] == [IGNORE_INDEX] * 10
    assert ds[0]["labels"][10:] == [
        *tok.encode("dog cat", add_bos=False, add_eos=False),
        tok.eos_id,
    ]
    assert tok.decode(ds[0]["labels"][10:]) == "dog cat"


def test_train_on_input_puts_loss_everywhere(
    tok: SentencePieceTokenizer, two_records: Path
) -> None:
    ds = InstructDataset(
        tok, source=two_records, template="alpaca", max_seq_len=64, train_on_input=True
    )
    for i, record in enumerate(RECORDS):
        prompt, response = _parts(tok, record, "alpaca")
        assert ds[i] == {"tokens": prompt + response, "labels": prompt + response}


def test_truncation_keeps_the_start(tok: SentencePieceTokenizer, two_records: Path) -> None:
    full = InstructDataset(tok, source=two_records, template="plain", max_seq_len=64)[0]
    cut = InstructDataset(tok, source=two_records, template="plain", max_seq_len=11)[0]
    assert cut == {"tokens": full["tokens"][:11], "labels": full["labels"][:11]}
    assert cut["labels"][-1] != IGNORE_INDEX  # the first response token survives
    assert tok.eos_id not in cut["tokens"]


def test_records_without_any_loss_token_are_dropped(
    tok: SentencePieceTokenizer, two_records: Path
) -> None:
    # Record 0's prompt is 10 ids (BOS included) and record 1's is 7: at 10, only record 1 keeps
    # a target.
    ds = InstructDataset(
        tok, source=two_records, template="plain", max_seq_len=10, max_dropped_fraction=0.5
    )
    assert (len(ds), ds.num_dropped) == (1, 1)
    assert ds[0]["labels"] == [IGNORE_INDEX] * 7 + tok.encode("sun", add_bos=False)
    with pytest.raises(DataError, match="all 2 records are longer than max_seq_len=7"):
        InstructDataset(tok, source=two_records, template="plain", max_seq_len=7)


def test_missing_field_reports_its_line(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [json.dumps(RECORDS[0]), "", '{"instruction": "Say hi."}']
    )
    with pytest.raises(DataError, match=error(path, ":3: missing field 'output'")):
        InstructDataset(tok, source=path, max_seq_len=64)
    with pytest.raises(DataError, match=error(path, ":3: missing field 'output'")):
        read_instruct_examples(path)


def test_field_must_be_a_string(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ['{"instruction": "Count.", "output": 3}'])
    with pytest.raises(
        DataError, match=error(path, ":1: field 'output' must be a string, got number")
    ):
        InstructDataset(tok, source=path, max_seq_len=64)
    path = write_jsonl(tmp_path / "e.jsonl", ['{"instruction": "a", "input": [], "output": "b"}'])
    with pytest.raises(
        DataError, match=error(path, ":1: field 'input' must be a string, got array")
    ):
        InstructDataset(tok, source=path, max_seq_len=64)


def test_unknown_template(tok: SentencePieceTokenizer, two_records: Path) -> None:
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'"):
        InstructDataset(tok, source=two_records, template="chatml", max_seq_len=64)


def test_read_instruct_examples(two_records: Path) -> None:
    assert read_instruct_examples(two_records, template="plain") == [
        ("Reverse the words.\ncat dog\n", "dog cat"),
        ("Repeat after me: sun\n", "sun"),
    ]


def test_every_bad_line_is_listed_up_to_20_then_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n' + "{oops\n" * 23 + "[1]\n" * 2, encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_numbered_records(path)
    lines = str(raised.value).split("\n")
    assert len(lines) == 21 and lines[-1] == "... and 5 more"
    assert (
        lines[0] == f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    assert (
        lines[19]
        == f"{path}:21: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    # A .json list goes on past an item that is not an object.
    listed = tmp_path / "d.json"
    listed.write_text('[1,\n {"a": 1},\n "x"]', encoding="utf-8")
    with pytest.raises(DataError) as raised:
        read_numbered_records(listed)
    assert str(raised.value) == (
        f"{listed}:1: a record must be a JSON object, got number\n"
        f"{listed}:3: a record must be a JSON object, got string"
    )


# -- text data set -----------------------------------------------------------------------------


def test_text_dataset(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", ['{"body": "the cat sat"}', '{"body": ""}'])
    ds = TextDataset(tok, source=path, max_seq_len=3, column="body")
    assert ds[0] == {
        "tokens": tok.encode("the cat sat")[:3],
        "labels": tok.encode("the cat sat")[:3],
    }
    assert ds[1] == {"tokens": [tok.bos_id, tok.eos_id], "labels": [tok.bos_id, tok.eos_id]}
    # Every bad record is reported, one per line, not only the first.
    both = f"{path}:1: missing field 'text'\n{path}:2: missing field 'text'"
    with pytest.raises(DataError, match=f"^{re.escape(both)}$"):
        TextDataset(tok, source=path, max_seq_len=8)


# -- collate -----------------------------------------------------------------------------------


def test_padded_collate() -> None:
    batch = [
        {"tokens": [1, 5, 6, 2], "labels": [-100, -100, 6, 2]},
        {"tokens": [1, 7], "labels": [-100, 7]},
    ]
    out = padded_collate(batch, pad_id=3)
    assert out["tokens"].dtype == out["labels"].dtype == torch.long
    assert out["tokens"].tolist() == [[1, 5, 6, 2], [1, 7, 3, 3]]
    assert out["labels"].tolist() == [[-100, -100, 6, 2], [-100, 7, -100, -100]]
    assert padded_collate(batch, pad_id=0, ignore_index=-1)["labels"][1].tolist() == [
        -100,
        7,
        -1,
        -1,
    ]
    with pytest.raises(ValueError):
        padded_collate([], pad_id=0)


# -- sampler -----------------------------------------------------------------------------------


def _order(sampler: ResumableSampler, epoch: int, skip: int = 0) -> list[int]:
    sampler.set_epoch(epoch, skip=skip)
    return list(sampler)


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a, b = ResumableSampler(50, seed=7), ResumableSampler(50, seed=7)
    torch.manual_seed(0)
    first = _order(a, 3)
    torch.manual_seed(1)  # the global RNG plays no part
    assert _order(b, 3) == first
    assert sorted(first) == list(range(50))
    assert _order(a, 4) != first
    assert _order(ResumableSampler(50, seed=8), 3) != first
    # (seed, epoch + 1) is not (seed + 1, epoch), as a plain seed + epoch would make it.
    assert _order(ResumableSampler(50, seed=0), 1) != _order(ResumableSampler(50, seed=1), 0)


def test_sampler_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    _order(ResumableSampler(50), 2)
    assert torch.equal(torch.get_rng_state(), state)


def test_sampler_skip_equals_slicing() -> None:
    sampler = ResumableSampler(37, seed=3)
    full = _order(sampler, 2)
    for skip in (0, 1, 16, 36, 37):
        assert _order(sampler, 2, skip) == full[skip:]
        assert len(sampler) == 37 - skip
    with pytest.raises(ValueError):
        sampler.set_epoch(2, skip=38)


def test_sampler_without_shuffle() -> None:
    assert _order(ResumableSampler(5, shuffle=False), 9, skip=2) == [2, 3, 4]


def test_resumed_loader_continues_where_it_stopped() -> None:
    data = [{"tokens": [i], "labels": [i]} for i in range(20)]

    def batches(skip: int) -> list[list[int]]:
        sampler = ResumableSampler(len(data), seed=5)
        sampler.set_epoch(1, skip=skip)
        loader = torch.utils.data.DataLoader(
            data, batch_size=4, sampler=sampler, collate_fn=lambda b: padded_collate(b, pad_id=0)
        )
        return [batch["tokens"].flatten().tolist() for batch in loader]

    assert batches(skip=2 * 4) == batches(skip=0)[2:]


# -- the demo assets ---------------------------------------------------------------------------


ASSETS = [
    "specs/data/demo_train.jsonl",
    "specs/data/demo_heldout.jsonl",
    "specs/data/demo_preference.jsonl",
    "runtime/assets/tiny/corpus.txt",
    "runtime/assets/tiny/tokenizer.model",
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_assets_script_is_deterministic_and_committed_files_are_current(tmp_path: Path) -> None:
    script = load_script("make_tiny_assets")
    script.write_assets(tmp_path / "a")
    script.write_assets(tmp_path / "b")
    for name in ASSETS:
        assert _digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name), name
        assert _digest(tmp_path / "a" / name) == _digest(REPO / name), (
            f"{name} is stale: run scripts/make_tiny_assets.py"
        )


def test_demo_data_is_sound(tok: SentencePieceTokenizer) -> None:
    train = read_records(REPO / "specs/data/demo_train.jsonl")
    heldout = read_records(REPO / "specs/data/demo_heldout.jsonl")
    assert (len(train), len(heldout)) == (4000, 200)
    keys = {(r["instruction"], r["input"]) for r in train}
    assert len(keys) == len(train)
    assert not keys & {(r["instruction"], r["input"]) for r in heldout}
    tasks = {r["instruction"].split(":")[0] for r in heldout}
    assert len(tasks) == 6
    for r in train + heldout:
        items = r["input"].split() or r["instruction"].split(": ")[1].split()
        answers = {
            "Repeat the words.": items,
            "Reverse the words.": items[::-1],
            "What is the first word?": items[:1],
            "What is the last word?": items[-1:],
            "Repeat after me": items,
        }
        if r["instruction"] == "Sort the digits.":
            assert r["output"] == "".join(sorted(r["input"]))
        else:
            assert r["output"].split() == answers[r["instruction"].split(":")[0]]
    # The demo budget: every sample fits in 64 tokens under the Alpaca template.
    ds = InstructDataset(
        tok, source=REPO / "specs/data/demo_train.jsonl", template="alpaca", max_seq_len=512
    )
    assert max(len(ds[i]["tokens"]) for i in range(len(ds))) < 64
