"""Shared pieces of the import tests: the published configs, importing one through the CLI, and
pointing an imported spec at a tiny local model and data set."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from helpers import cli_in_process, save_random_hf_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TORCHTUNE = sorted((FIXTURES / "torchtune").glob("*/*.yaml"))
AXOLOTL = sorted(p for p in (FIXTURES / "axolotl").glob("*/*") if p.suffix in (".yml", ".yaml"))
# One stderr line of `tunegen import`: a key not imported, a note, or where the spec went.
REPORT_LINE = re.compile(r"^(\S+: not imported \(.+\)|\S+: note: .+|wrote \S+; next: .+)$")

WORDS = [
    "Below",
    "is",
    "an",
    "instruction",
    "that",
    "describes",
    "a",
    "task",
    ".",
    "Write",
    "a",
    "response",
    "appropriately",
    "completes",
    "the",
    "request",
    "###",
    "Instruction",
    ":",
    "Response",
    "Input",
    "Reverse",
    "words",
    "Sort",
    "digits",
    "say",
    "hi",
    "ok",
    "yes",
    "no",
]


def fixture_id(path: Path) -> str:
    """`llama3_2/1B_lora_single_device` for a fixture's test id."""
    return f"{path.parent.name}/{path.stem}"


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def import_config(config: Path, out: Path, *extra: str) -> tuple[int, dict | None, str]:
    """`tunegen import CONFIG -o OUT` in this process: (exit status, spec values, stderr)."""
    status, _, err = cli_in_process("import", str(config), "-o", str(out), *extra)
    return status, (read_yaml(out) if status == 0 else None), err


def save_tiny_model(folder: Path, architecture: str = "llama") -> Path:
    """A random Hugging Face checkpoint (tests/helpers.HF_TEST_SIZES, vocabulary 128) with a
    word-level `tokenizer.json` that fits that vocabulary."""
    import tokenizers
    import transformers
    from tokenizers import models, pre_tokenizers, processors

    save_random_hf_model(folder, architecture)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({word: i + 3 for i, word in enumerate(dict.fromkeys(WORDS))})
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    return folder


def write_tiny_data(folder: Path) -> dict[str, Path]:
    """Tiny instruct and preference JSONL files, 64 records each: {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    instruct = [{"instruction": "Reverse words", "input": "yes no", "output": "no yes"}] * 64
    preference = [{"prompt": "say hi", "chosen": "hi", "rejected": "no"}] * 64
    files = {"instruct": instruct, "preference": preference}
    paths = {}
    for name, records in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


def point_at_local(spec_path: Path, model: Path, data: dict[str, Path]) -> dict:
    """Rewrite an imported spec so that it trains here: the tiny model (also the teacher), the tiny
    data of its format, a short max_seq_len and a run dir under the spec's folder. Every other
    value stays as imported. Returns the new values."""
    values = read_yaml(spec_path)
    values["model"] = str(model)
    values["data"]["path"] = str(data["preference" if values["method"] == "dpo" else "instruct"])
    values["data"]["max_seq_len"] = 64
    if values["data"].get("format") in ("instruct", "preference"):
        values["data"]["template"] = "alpaca"  # the tiny tokenizer has no chat tokens
    if "kd" in values:
        values["kd"]["teacher"] = str(model)
    values.setdefault("checkpoint", {})["output_dir"] = f"runs/{values['name']}"
    values.setdefault("training", {})["device"] = "cpu"
    text = spec_path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    spec_path.write_text(header + yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return values
