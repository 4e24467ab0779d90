"""`tunegen data`: the preview, statistics and export describe exactly what the recipe trains on.

The reference is always the recipe's own dataset object (the generated recipe's `_setup_data`, or
the config's `dataset` section instantiated the way every recipe does it); the statistics are
checked against counts made here from the tokenizer on a small hand-made file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tunegen
from test_chat_data import CONVERSATION, SHAREGPT, dirs  # noqa: F401 (dirs is a fixture)
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from tunegen.compiler.cli import app
from tunegen.runtime.config import instantiate, load_config
from tunegen.runtime.data import IGNORE_INDEX, padded_collate
from tunegen.runtime.data.packing import PackSampler, best_fit_decreasing
from tunegen.runtime.tokenizers import builtin_tokenizer

RECORDS = [
    {"instruction": "Name a colour.", "output": "red"},
    {"instruction": "Count to three.", "input": "slowly", "output": "one two three"},
    {"instruction": "Say hello " + "again " * 30, "output": "hello"},  # response truncated away
    {"instruction": "Echo.", "input": "the cat sat", "output": "the cat sat " * 8},  # truncated
    {"instruction": "Nothing?", "output": ""},
    {"instruction": "Greet the world.", "output": "hello world"},
]
MAX_SEQ_LEN = 24
BATCH_SIZE = 4

SPEC = f"""\
name: small
method: full
model: tiny
data:
  {{path: data/small.jsonl, format: instruct, template: plain, max_seq_len: {MAX_SEQ_LEN},
   max_dropped_fraction: 0.5}}
training: {{batch_size: {BATCH_SIZE}, max_steps: 1}}
"""


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_data(*args: str) -> tuple[int, str]:
    """`tunegen data ARGS` in this process (fast); returns (exit code, stdout + stderr)."""
    result = CliRunner().invoke(app, ["data", *args], color=True)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, result.output + (repr(result.exception) if crashed else "")


def read_export(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def small_spec(workdir: Path) -> Path:
    write_jsonl(workdir / "data/small.jsonl", RECORDS)
    (workdir / "spec.yaml").write_text(SPEC)
    return workdir / "spec.yaml"


def recipe_dataset(config: Path):
    """The dataset the generated recipe next to `config` builds, through its own `_setup_data`."""
    spec = importlib.util.spec_from_file_location("generated_recipe", config.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = load_config(config)
    recipe = module.FullFinetuneRecipe(cfg)
    recipe.tokenizer = instantiate(cfg.tokenizer)
    return recipe._setup_data()


@pytest.mark.parametrize("template", ["plain", "alpaca"])
def test_export_equals_the_generated_recipes_dataloader(small_spec: Path, template: str) -> None:
    # alpaca's preamble alone is longer than 24 tokens
    spec = SPEC.replace("template: plain", f"template: {template}")
    small_spec.write_text(spec.replace("max_seq_len: 24", "max_seq_len: 96"))
    code, out = run_data(str(small_spec), "--show", "0", "--export", "rows.jsonl")
    assert code == 0, out
    rows = read_export(Path("rows.jsonl"))

    assert tunegen("new", "--spec", str(small_spec)).returncode == 0
    dataloader = recipe_dataset(Path("generated/small.yaml"))
    dataset = dataloader.dataset
    assert [r["input_ids"] for r in rows] == [dataset[i]["tokens"] for i in range(len(dataset))]
    assert [r["labels"] for r in rows] == [dataset[i]["labels"] for i in range(len(dataset))]
    # What the loader yields, unshuffled and unpadded, is the export row for row.
    ordered = DataLoader(dataset, batch_size=BATCH_SIZE, collate_fn=dataloader.collate_fn)
    yielded = []
    for batch in ordered:
        for tokens, labels in zip(batch["tokens"], batch["labels"], strict=True):
            n = next(len(r["input_ids"]) for r in rows[len(yielded) :][:1])
            assert (tokens[n:] == dataloader.collate_fn.keywords["pad_id"]).all()
            yielded.append({"input_ids": tokens[:n].tolist(), "labels": labels[:n].tolist()})
    assert yielded == rows


def expected_stats() -> dict:
    """The statistics of RECORDS, counted here from the tokenizer and the plain template."""
    tok = builtin_tokenizer("tiny")
    lengths, untruncated, loss, dropped_lines = [], [], 0, []
    for line, r in enumerate(RECORDS, start=1):
        prompt = r["instruction"] + (f"\n{r['input']}\n" if r.get("input") else "\n")
        prompt_ids = tok.encode(prompt, add_bos=True, add_eos=False)
        response_ids = tok.encode(r["output"], add_bos=False, add_eos=True)
        n = len(prompt_ids) + len(response_ids)
        kept_response = max(0, min(n, MAX_SEQ_LEN) - len(prompt_ids))
        if kept_response == 0:
            dropped_lines.append(line)
            continue
        lengths.append(min(n, MAX_SEQ_LEN))
        untruncated.append(n)
        loss += kept_response
    batches = [lengths[i : i + BATCH_SIZE] for i in range(0, len(lengths), BATCH_SIZE)]
    padded = sum(len(b) * max(b) for b in batches)
    packs = len(best_fit_decreasing(lengths, MAX_SEQ_LEN))
    return {
        "samples": len(lengths),
        "dropped": len(dropped_lines),
        "dropped_lines": dropped_lines,
        "tokens": sum(lengths),
        "length_min": min(lengths),
        "length_max": max(lengths),
        "length_median": float(np.median(lengths)),
        "loss_tokens": loss,
        "loss_share": loss / sum(lengths),
        "truncated_samples": sum(n > MAX_SEQ_LEN for n in untruncated),
        "truncated_tokens": sum(n - MAX_SEQ_LEN for n in untruncated if n > MAX_SEQ_LEN),
        "padding_share": (padded - sum(lengths)) / padded,
        "packs": packs,
        "packed_padding_share": (packs * MAX_SEQ_LEN - sum(lengths)) / (packs * MAX_SEQ_LEN),
    }


def test_statistics_equal_independent_counts(small_spec: Path) -> None:
    code, out = run_data(str(small_spec), "--json")
    assert code == 0, out
    stats = json.loads(out)
    expected = expected_stats()
    assert expected["truncated_samples"] >= 1 and expected["dropped"] == 1  # the file tests both
    for key, value in expected.items():
        if key == "dropped_lines":
            assert [d["line"] for d in stats["dropped_records"]] == value
        else:
            assert stats[key] == pytest.approx(value), key
    assert "max_seq_len=24" in stats["dropped_records"][0]["reason"]


def test_table_reports_the_same_numbers(small_spec: Path) -> None:
    code, out = run_data(str(small_spec), "--show", "0")
    assert code == 0, out
    expected = expected_stats()
    assert f"{expected['samples']} of {len(RECORDS)} records (1 dropped)" in out
    assert f"{expected['loss_share']:.1%} of tokens carry loss" in out
    assert f"{expected['truncated_samples']} samples" in out
    assert f"{expected['truncated_tokens']} tokens lost" in out
    assert f"{expected['padding_share']:.1%} of compute is padding at batch size 4" in out
    assert "line 3:" in out  # the dropped record, by line


def test_overrides_apply_as_in_tunegen_run(small_spec: Path) -> None:
    code, out = run_data(str(small_spec), "--json", "dataset.max_seq_len=200")
    assert code == 0, out
    stats = json.loads(out)
    assert stats["truncated_samples"] == 0 and stats["dropped"] == 0


def preview_tokens(body: str) -> list[tuple[str, bool]]:
    """(text, carries loss) per token of a plain-text preview body."""
    tokens = []
    for cell in body.replace("\n", "").split("|"):
        loss = cell.startswith("[") and cell.endswith("]")
        text = cell[1:-1] if loss else cell
        tokens.append((text.replace("␣", " ").replace("↵", "\n").replace("∅", ""), loss))
    return tokens


def test_preview_marks_exactly_the_loss_tokens(small_spec: Path) -> None:
    code, out = run_data(str(small_spec), "--show", "2")
    assert code == 0, out
    dataset = instantiate(
        load_config_from_spec(small_spec).dataset, tokenizer=builtin_tokenizer("tiny")
    )
    tok = builtin_tokenizer("tiny")
    bodies = out.split("── sample ")[1:3]
    for index, block in enumerate(bodies):
        body = block.split("\n", 1)[1].split("\ndata:")[0].rstrip("\n")
        shown = preview_tokens(body)
        item = dataset[index]
        assert len(shown) == len(item["tokens"])
        assert [loss for _, loss in shown] == [label != IGNORE_INDEX for label in item["labels"]]
        text = "".join(t for t, _ in shown)
        assert text == tok.decode(item["tokens"], skip_special_tokens=False)
        loss_ids = [
            t for t, label in zip(item["tokens"], item["labels"], strict=True) if label >= 0
        ]
        shown_loss_text = "".join(t for t, loss in shown if loss)
        assert shown_loss_text.strip() == tok.decode(loss_ids, skip_special_tokens=False).strip()
    assert bodies[0].rstrip("\n").endswith("\n[␣red]|[</s>]")  # the first response, marked


def load_config_from_spec(spec: Path):
    """The config `tunegen new` would write for `spec`, read as the recipe reads it."""
    from tunegen.compiler.cli.data_view import compiled_config
    from tunegen.compiler.pipeline import compile_spec

    return compiled_config(compile_spec(spec))


def test_packed_preview_shows_the_first_row_training_reads(small_spec: Path) -> None:
    code, out = run_data(str(small_spec), "--packed", "dataset.max_seq_len=64")
    assert code == 0, out
    cfg = load_config_from_spec(small_spec)
    cfg.dataset.max_seq_len = 64
    dataset = instantiate(cfg.dataset, tokenizer=instantiate(cfg.tokenizer))
    lengths = [len(dataset[i]["tokens"]) for i in range(len(dataset))]
    sampler = PackSampler(lengths, 64, shuffle=True, seed=cfg.environment.seed)
    first = next(iter(sampler))  # the recipe's first packed row
    assert len(first) > 1
    assert f"── packed sequence 1 of {len(sampler)} (training order, epoch 1): " in out
    assert f"{len(first)} documents, {sum(lengths[i] for i in first)} of 64 tokens" in out
    for number, index in enumerate(first[1:], start=2):
        assert out.count(f"‖ document {number} (line {dataset.lines[index]}) ‖") == 1


def test_colour_on_a_terminal_marks_loss_tokens_green(small_spec: Path, monkeypatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    code, out = run_data(str(small_spec), "--show", "1")
    assert code == 0, out
    assert "\x1b[1;32" in out and "|" not in out.split("── sample")[1].split("\n")[1]


CHAT_CASES = {
    "llama3": {"template": "llama3", "records": [{"messages": CONVERSATION}]},
    "chatml-sharegpt": {"template": "chatml", "records": [{"conversations": SHAREGPT}]},
    "mistral": {"template": "mistral", "records": [{"messages": CONVERSATION[1:]}]},
    "alpaca": {"template": "alpaca", "records": [{"messages": CONVERSATION[1:3]}]},
    "tokenizer": {"template": "tokenizer", "records": [{"messages": CONVERSATION}]},
}
TOKENIZER_DIR = {"llama3": "llama3", "chatml": "chatml", "mistral": "mistral", "alpaca": "alpaca"}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_export_equals_the_dataset_for_every_chat_template(case, dirs, workdir) -> None:  # noqa: F811
    template = CHAT_CASES[case]["template"]
    tokenizer_dir = dirs[TOKENIZER_DIR.get(template, "chatml")]
    write_jsonl(workdir / "chat.jsonl", CHAT_CASES[case]["records"] * 3)
    config = workdir / "chat.yaml"
    config.write_text(
        f"""\
tokenizer:
  _component_: tunegen.runtime.tokenizers.load_tokenizer
  path: {tokenizer_dir}
dataset:
  _component_: tunegen.runtime.data.ChatDataset
  source: chat.jsonl
  template: {template}
  max_seq_len: 256
dataloader:
  batch_size: 2
"""
    )
    code, out = run_data(str(config), "--show", "1", "--export", "rows.jsonl")
    assert code == 0, out
    cfg = load_config(config)
    dataset = instantiate(cfg.dataset, tokenizer=instantiate(cfg.tokenizer))
    rows = read_export(workdir / "rows.jsonl")
    assert rows == [
        {"input_ids": dataset[i]["tokens"], "labels": dataset[i]["labels"]}
        for i in range(len(dataset))
    ]
    batch = padded_collate([dataset[0], dataset[1]], pad_id=0)
    assert batch["labels"][0, : len(rows[0]["labels"])].tolist() == rows[0]["labels"]


def test_text_format_export(workdir) -> None:
    write_jsonl(workdir / "text.jsonl", [{"text": "the cat sat"}, {"text": "on the mat " * 20}])
    (workdir / "spec.yaml").write_text(
        "name: t\nmethod: full\nmodel: tiny\n"
        "data: {path: text.jsonl, format: text, max_seq_len: 16}\ntraining: {batch_size: 2}\n"
    )
    code, out = run_data("spec.yaml", "--json", "--export", "rows.jsonl")
    assert code == 0, out
    stats = json.loads(out.splitlines()[-1])
    assert stats["loss_share"] == 1.0 and stats["truncated_samples"] == 1
    rows = read_export(workdir / "rows.jsonl")
    assert rows[0]["input_ids"] == builtin_tokenizer("tiny").encode("the cat sat")
    assert rows[0]["labels"] == rows[0]["input_ids"] and len(rows[1]["input_ids"]) == 16


def test_export_refuses_to_overwrite_without_force(small_spec: Path) -> None:
    Path("rows.jsonl").write_text("mine\n")
    code, _ = run_data(str(small_spec), "--export", "rows.jsonl")
    assert code != 0 and Path("rows.jsonl").read_text() == "mine\n"
    code, _ = run_data(str(small_spec), "--show", "0", "--export", "rows.jsonl", "--force")
    assert code == 0 and len(read_export(Path("rows.jsonl"))) == 5


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (None, "data.path: file 'data/small.jsonl' not found"),
        (
            ['{"instruction": "a", "output": "b"}', "{not json"],
            "error: data/small.jsonl:2: not valid JSON",
        ),
        (['{"instruction": "a"}'], "error: data/small.jsonl:1: missing field 'output'"),
    ],
)
def test_bad_data_is_one_line_exit_2(small_spec: Path, lines, message) -> None:
    data = Path("data/small.jsonl")
    if lines is None:
        data.unlink()
    else:
        data.write_text("\n".join(lines) + "\n")
    result = tunegen("data", str(small_spec))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_preference_pairs_show_export_and_count_both_sides(workdir) -> None:
    pairs = [
        {"prompt": "Name a colour.", "chosen": "red", "rejected": "seven"},
        {"prompt": "Count to two.", "chosen": "one two", "rejected": "two one"},
        {"prompt": "Say yes.", "chosen": "yes", "rejected": "no"},
    ]
    write_jsonl(workdir / "pref.jsonl", pairs)
    (workdir / "spec.yaml").write_text(
        "name: p\nmethod: dpo\nmodel: tiny\n"
        "data: {path: pref.jsonl, format: preference, template: plain, max_seq_len: 32}\n"
        "training: {batch_size: 2}\n"
    )
    code, out = run_data("spec.yaml", "--show", "1", "--export", "rows.jsonl")
    assert code == 0, out
    assert "(chosen)" in out and "(rejected)" in out and out.count("[</s>]") == 2
    cfg = load_config_from_spec(Path("spec.yaml"))
    dataset = instantiate(cfg.dataset, tokenizer=builtin_tokenizer("tiny"))
    rows = read_export(workdir / "rows.jsonl")
    assert rows == [
        {
            "chosen_input_ids": dataset[i]["chosen_tokens"],
            "chosen_labels": dataset[i]["chosen_labels"],
            "rejected_input_ids": dataset[i]["rejected_tokens"],
            "rejected_labels": dataset[i]["rejected_labels"],
        }
        for i in range(3)
    ]
    code, out = run_data("spec.yaml", "--json")
    stats = json.loads(out)
    lengths = [len(r[k]) for r in rows for k in ("chosen_input_ids", "rejected_input_ids")]
    assert stats["samples"] == 3 and stats["tokens"] == sum(lengths)
    # batch_size 2 pairs = 4 rows per batch, padded to the longest of the four
    padded = 4 * max(lengths[:4]) + 2 * max(lengths[4:])
    assert stats["padding_share"] == pytest.approx((padded - sum(lengths)) / padded)
    assert stats["packs"] is None
