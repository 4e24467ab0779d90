"""The malformed-input corpus: every bad input a user can hand tunegen gives one clean line.

Each case writes its files into a fresh working directory, runs one `tunegen` command in this
process (as the console script does: `main()` with `sys.argv`) and checks the result: exit status
2, exactly one line on stderr starting with `error:` and holding the expected words, and no
traceback anywhere. Categories: specs, configs and overrides, data files, checkpoints, tokenizers.
`test_corpus_size_and_coverage` prints the corpus size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import tunegen_status as _call
from safetensors.torch import load_file, save_file

from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
from tunegen.runtime.models import llama

INSTRUCT = '{"instruction": "Say hi.", "output": "hi"}\n'
SPEC = """\
name: bad
method: full
model: tiny
data: {path: train.jsonl, max_seq_len: 64}
training: {max_steps: 1, batch_size: 1}
"""
HF_SPEC = """\
name: bad
method: full
model: ckpt
tokenizer: tok.model
data: {path: train.jsonl, template: plain, max_seq_len: 64}
training: {max_steps: 1, batch_size: 1}
"""


@dataclass(frozen=True)
class Case:
    """A bad input: the files it writes, the command, and words the one error line must hold.

    `lines` > 1: a list of located problems (every bad record of a data file), one per line.
    """

    category: str
    files: dict[str, str | bytes]
    argv: list[str]
    expect: str
    setup: Callable[[Path], None] | None = field(default=None)
    lines: int = 1


def _spec_with(old: str, new: str, text: str = SPEC) -> dict[str, str]:
    assert old in text
    return {"spec.yaml": text.replace(old, new), "train.jsonl": INSTRUCT}


def _compiled(*extra: str) -> list[str]:
    """argv that compiles the good spec, then runs its recipe with `extra` overrides."""
    return ["run", "generated/bad.py", *extra]


CHAT_SPEC = SPEC.replace("max_seq_len: 64", "format: chat, template: TEMPLATE, max_seq_len: 64")
CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
TORCHTUNE = """\
model:
  _component_: torchtune.models.llama3_2.lora_llama3_2_1b
  lora_rank: 8
checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: /tmp/Llama-3.2-1B-Instruct
dataset:
  _component_: torchtune.datasets.alpaca_cleaned_dataset
optimizer:
  _component_: torch.optim.AdamW
  lr: 3e-4
"""
AXOLOTL = """\
base_model: NousResearch/Llama-2-7b-hf
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
adapter: lora
"""


def _chat_spec(template: str, records: str = CHAT) -> dict[str, str]:
    return {"spec.yaml": CHAT_SPEC.replace("TEMPLATE", template), "train.jsonl": records}


def _instruct_rows(good: int, long: int = 0) -> str:
    """`good` short records, then `long` ones whose response starts after max_seq_len=64."""
    rows = [json.dumps({"instruction": f"say {i}", "output": "ok"}) for i in range(good)]
    rows += [json.dumps({"instruction": "word " * 80, "output": "x"})] * long
    return "\n".join(rows) + "\n"


def _existing_export(workdir: Path) -> None:
    (workdir / "spec.yaml").write_text(SPEC)
    (workdir / "train.jsonl").write_text(INSTRUCT)
    (workdir / "rows.jsonl").write_text("mine\n")


def _sibling_model_dir(workdir: Path) -> None:
    _small_checkpoint(workdir)
    (workdir / "spec.yaml").write_text(HF_SPEC.replace("model: ckpt", "model: Ckpt"))


def _good_recipe(workdir: Path) -> None:
    (workdir / "spec.yaml").write_text(SPEC)
    (workdir / "train.jsonl").write_text(INSTRUCT)
    _call(["new", "--spec", "spec.yaml"])


def _small_checkpoint(workdir: Path) -> Path:
    """A 2-layer HF checkpoint dir with the tiny model's vocabulary and sentencepiece tokenizer."""
    from tunegen.runtime.tokenizers.sentencepiece import builtin_tokenizer_path

    torch.manual_seed(0)
    model = llama(
        vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64
    )
    save_hf_checkpoint(model, workdir / "ckpt", max_shard_size=200_000)
    (workdir / "tok.model").write_bytes(builtin_tokenizer_path("tiny").read_bytes())
    (workdir / "spec.yaml").write_text(HF_SPEC)
    (workdir / "train.jsonl").write_text(INSTRUCT)
    return workdir / "ckpt"


def _missing_shard(workdir: Path) -> None:
    shards = sorted((_small_checkpoint(workdir)).glob("model-*.safetensors"))
    shards[-1].unlink()
    _call(["new", "--spec", "spec.yaml"])


def _shape_mismatch(workdir: Path) -> None:
    ckpt = _small_checkpoint(workdir)
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    name = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, shard, metadata={"format": "pt"})
    _call(["new", "--spec", "spec.yaml"])


def _corrupt_shard(workdir: Path) -> None:
    ckpt = _small_checkpoint(workdir)
    sorted(ckpt.glob("model-*.safetensors"))[0].write_bytes(b"\x00garbage" * 10)
    _call(["new", "--spec", "spec.yaml"])


def _wrong_architecture(workdir: Path) -> None:
    ckpt = _small_checkpoint(workdir)
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    config["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(config))


def _trained_recipe(workdir: Path) -> None:
    _good_recipe(workdir)
    _call(_compiled())


def _distributed_recipe(workdir: Path) -> None:
    (workdir / "spec.yaml").write_text(SPEC + "distributed: {nproc_per_node: 2}\n")
    (workdir / "train.jsonl").write_text(INSTRUCT)
    _call(["new", "--spec", "spec.yaml"])


def _broken_resume(workdir: Path) -> None:
    _good_recipe(workdir)
    _call(_compiled("training.max_steps=1"))
    state = workdir / "runs/bad/step_000001/recipe_state.pt"
    state.write_bytes(b"not a torch file")


def _edited_then(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Setup: compile the good spec, then `change` the working directory (for `tunegen update`)."""

    def setup(workdir: Path) -> None:
        _good_recipe(workdir)
        change(workdir)

    return setup


def _left_conflicts(workdir: Path) -> None:
    """An update that stopped on a conflict (both changed training.lr), not yet resolved."""
    config = workdir / "generated/bad.yaml"
    config.write_text(config.read_text().replace("  lr: 0.0003", "  lr: 0.001"))
    (workdir / "spec.yaml").write_text(SPEC.replace("batch_size: 1}", "batch_size: 1, lr: 1.0e-5}"))
    assert _call(["update", "generated/bad.py"]) == 1


def _compile_then_write(workdir: Path, name: str, text: str) -> None:
    """Compile spec.yaml (to generated/bad.py), then write file `name`."""
    assert _call(["new", "--spec", "spec.yaml"]) == 0
    (workdir / name).write_text(text)


GRPO_SPEC = """\
name: bad
method: grpo
model: tiny
data: {path: prompts.jsonl, format: prompts, template: plain, max_seq_len: 64}
grpo: {group_size: 2, max_new_tokens: 2, log_completions_every_n_steps: null}
reward: [rewards.py:score]
training: {max_steps: 1, batch_size: 1}
"""
PROMPTS = '{"prompt": "Say hi.", "answer": "hi"}\n'


def _grpo(reward_body: str, spec: str = GRPO_SPEC) -> dict[str, str]:
    """A GRPO spec whose reward file defines `score` with `reward_body` as its body."""
    rewards = f"import math\n\ndef score(prompts, completions, **fields):\n    {reward_body}\n"
    return {"spec.yaml": spec, "prompts.jsonl": PROMPTS, "rewards.py": rewards}


def _grpo_recipe(workdir: Path) -> None:
    _call(["new", "--spec", "spec.yaml"])


CASES: dict[str, Case] = {
    # -- specs ------------------------------------------------------------------------------------
    "spec_bad_yaml": Case(
        "spec", _spec_with("max_steps: 1,", "max_steps: [1,"), ["new", "-s", "spec.yaml"], "YAML"
    ),
    "spec_tab_indent": Case(
        "spec",
        {"spec.yaml": "name: bad\nmethod: full\n\tmodel: tiny\n"},
        ["new", "-s", "spec.yaml"],
        "invalid YAML",
    ),
    "spec_empty": Case("spec", {"spec.yaml": ""}, ["new", "-s", "spec.yaml"], "spec.yaml"),
    "spec_a_list": Case(
        "spec", {"spec.yaml": "- name: x\n"}, ["new", "-s", "spec.yaml"], "spec.yaml"
    ),
    "spec_not_utf8": Case(
        "spec", {"spec.yaml": b"name: \xff\xfe\n"}, ["new", "-s", "spec.yaml"], "spec.yaml"
    ),
    "spec_unknown_key": Case(
        "spec",
        _spec_with("name: bad", "name: bad\ncolour: red"),
        ["new", "-s", "spec.yaml"],
        "colour: unknown key",  # and no far-fetched did-you-mean
    ),
    "spec_misplaced_key": Case(
        "spec",
        _spec_with("max_steps: 1,", "max_steps: 1, rank: 4,"),
        ["new", "-s", "spec.yaml"],
        "lora.rank",
    ),
    "spec_wrong_type": Case(
        "spec",
        _spec_with("batch_size: 1", "batch_size: one"),
        ["new", "-s", "spec.yaml"],
        "training.batch_size: expected an integer",
    ),
    "spec_out_of_range": Case(
        "spec",
        _spec_with("max_seq_len: 64", "max_seq_len: 2"),
        ["new", "-s", "spec.yaml"],
        "data.max_seq_len: must be at least 8",
    ),
    "spec_unknown_method": Case(
        "spec",
        _spec_with("method: full", "method: sft"),
        ["new", "-s", "spec.yaml"],
        "method: 'sft' is not one of",
    ),
    "spec_missing_model": Case(
        "spec",
        _spec_with("model: tiny\n", ""),
        ["new", "-s", "spec.yaml"],
        "model: missing required key",
    ),
    "spec_name_is_a_path": Case(
        "spec",
        _spec_with("name: bad", "name: ../x"),
        ["new", "-s", "spec.yaml"],
        "name: '../x' is not a plain Python identifier",
    ),
    "spec_absolute_name": Case(
        "spec",
        _spec_with("name: bad", "name: /tmp/x"),
        ["new", "-s", "spec.yaml"],
        "is not a plain Python identifier",
    ),
    "spec_dpo_without_preference_data": Case(
        "spec",
        _spec_with("method: full", "method: dpo"),
        ["new", "-s", "spec.yaml"],
        "method: dpo needs data.format: preference",
    ),
    "spec_dpo_packed": Case(
        "spec",
        {
            "spec.yaml": SPEC.replace("method: full", "method: dpo").replace(
                "max_seq_len: 64", "format: preference, packed: true"
            ),
            "train.jsonl": '{"prompt": "x", "chosen": "y", "rejected": "z"}\n',
        },
        ["new", "-s", "spec.yaml"],
        "spec.yaml:4: data.packed: method: dpo does not pack",
    ),
    "spec_packed_and_length_buckets": Case(
        "spec",
        _spec_with("max_seq_len: 64}", "packed: true, bucket_by_length: true}"),
        ["new", "-s", "spec.yaml"],
        "spec.yaml:4: data.bucket_by_length: packed rows hold no padding to save",
    ),
    "spec_optimizer_in_bwd_with_clipping": Case(
        "spec",
        _spec_with("batch_size: 1}", "batch_size: 1, grad_accum: 2, optimizer_in_bwd: true}"),
        ["new", "-s", "spec.yaml"],
        "training.optimizer_in_bwd: cannot be used with training.grad_accum or "
        "training.clip_grad_norm",
    ),
    "spec_optimizer_in_bwd_with_lora": Case(
        "spec",
        _spec_with(
            "method: full\n",
            "method: lora\n",
            SPEC.replace(
                "batch_size: 1}", "batch_size: 1, optimizer_in_bwd: true, clip_grad_norm: null}"
            ),
        ),
        ["new", "-s", "spec.yaml"],
        "training.optimizer_in_bwd: only for method: full (this spec has lora)",
    ),
    "spec_tokens_per_batch_below_max_seq_len": Case(
        "spec",
        _spec_with("batch_size: 1}", "tokens_per_batch: 32}"),
        ["new", "-s", "spec.yaml"],
        "training.tokens_per_batch: 32 is less than data.max_seq_len (64)",
    ),
    "spec_tokens_per_batch_and_packed": Case(
        "spec",
        _spec_with(
            "max_seq_len: 64}\ntraining: {max_steps: 1, batch_size: 1}",
            "max_seq_len: 64, packed: true}\ntraining: {max_steps: 1, tokens_per_batch: 128}",
        ),
        ["new", "-s", "spec.yaml"],
        "training.tokens_per_batch: batches by tokens itself; remove data.packed",
    ),
    "spec_chunked_loss_with_dpo": Case(
        "spec",
        {
            "spec.yaml": SPEC.replace("method: full", "method: dpo")
            .replace("max_seq_len: 64", "format: preference")
            .replace("batch_size: 1}", "batch_size: 1, chunked_loss: true}"),
            "train.jsonl": '{"prompt": "x", "chosen": "y", "rejected": "z"}\n',
        },
        ["new", "-s", "spec.yaml"],
        "training.chunked_loss: method: dpo reads the whole logits",
    ),
    "spec_kd_without_teacher": Case(
        "spec",
        _spec_with("method: full", "method: kd"),
        ["new", "-s", "spec.yaml"],
        "method: kd needs a kd section",
    ),
    "spec_lora_settings_on_full": Case(
        "spec",
        _spec_with("name: bad", "name: bad\nlora: {rank: 4}"),
        ["new", "-s", "spec.yaml"],
        "lora: only used with method: lora, dora or qlora",
    ),
    "spec_missing_data_file": Case(
        "spec",
        {"spec.yaml": SPEC},
        ["new", "-s", "spec.yaml"],
        "data.path: file 'train.jsonl' not found",
    ),
    "spec_unknown_model": Case(
        "spec",
        _spec_with("model: tiny", "model: llama-3-8b"),
        ["new", "-s", "spec.yaml"],
        "is not a built-in model",
    ),
    "spec_missing_file": Case("spec", {}, ["new", "-s", "nothere.yaml"], "nothere.yaml"),
    "spec_model_dir_in_another_case": Case(
        "spec",
        {},
        ["validate", "spec.yaml"],
        "(no dir 'Ckpt'; a path is relative to the spec's folder); did you mean the dir 'ckpt'?",
        _sibling_model_dir,
    ),
    "spec_max_dropped_fraction_above_1": Case(
        "spec",
        _spec_with("max_seq_len: 64", "max_seq_len: 64, max_dropped_fraction: 2"),
        ["validate", "spec.yaml"],
        "data.max_dropped_fraction: must be at most 1",
    ),
    # validation during training (data.val_path / data.val_split, checkpoint.keep_best)
    "spec_val_path_and_val_split": Case(
        "spec",
        {
            **_spec_with("max_seq_len: 64", "max_seq_len: 64, val_path: val.jsonl, val_split: 0.1"),
            "val.jsonl": INSTRUCT,
        },
        ["new", "-s", "spec.yaml"],
        "spec.yaml:4: data.val_split: set data.val_path or data.val_split, not both",
    ),
    "spec_val_split_out_of_range": Case(
        "spec",
        _spec_with("max_seq_len: 64", "max_seq_len: 64, val_split: 1.5"),
        ["validate", "spec.yaml"],
        "spec.yaml:4: data.val_split: must be less than 1, got 1.5",
    ),
    "spec_val_split_zero": Case(
        "spec",
        _spec_with("max_seq_len: 64", "max_seq_len: 64, val_split: 0"),
        ["new", "-s", "spec.yaml"],
        "data.val_split: must be greater than 0, got 0",
    ),
    "spec_keep_best_without_validation": Case(
        "spec",
        _spec_with("name: bad", "name: bad\ncheckpoint: {keep_best: val_loss}"),
        ["new", "-s", "spec.yaml"],
        "spec.yaml:2: checkpoint.keep_best: needs validation data: set data.val_path (a file) "
        "or data.val_split (a share)",
    ),
    "spec_val_every_n_steps_without_validation": Case(
        "spec",
        _spec_with("batch_size: 1}", "batch_size: 1, val_every_n_steps: 5}"),
        ["validate", "spec.yaml"],
        "training.val_every_n_steps: needs validation data",
    ),
    "spec_keep_best_unknown_metric": Case(
        "spec",
        _spec_with("name: bad", "name: bad\ncheckpoint: {keep_best: accuracy}"),
        ["new", "-s", "spec.yaml"],
        "checkpoint.keep_best: 'accuracy' is not one of val_loss",
    ),
    "spec_missing_val_file": Case(
        "spec",
        _spec_with("max_seq_len: 64", "max_seq_len: 64, val_path: val.jsonl"),
        ["new", "-s", "spec.yaml"],
        "spec.yaml:4: data.val_path: file 'val.jsonl' not found",
    ),
    "validate_empty_file": Case(
        "spec", {"x.yaml": ""}, ["validate", "x.yaml"], "x.yaml: the file is empty; expected"
    ),
    "validate_unrelated_mapping": Case(
        "spec",
        {"x.yaml": "foo: 1\n"},
        ["validate", "x.yaml"],
        "x.yaml: the file has keys foo, none of a spec's nor a component section",
    ),
    "validate_a_list": Case(
        "spec", {"x.yaml": "- a\n- b\n"}, ["validate", "x.yaml"], "holds a list (2 items)"
    ),
    "validate_axolotl_config": Case(
        "spec",
        {"x.yaml": AXOLOTL},
        ["validate", "x.yaml"],
        "looks like an axolotl config (base_model, datasets); turn it into a spec with: "
        "tunegen import x.yaml -o spec.yaml",
    ),
    "validate_a_recipe_file": Case(
        "config",
        {},
        ["validate", "generated/bad.py"],
        "generated/bad.py: this is a recipe; pass its config (e.g. generated/bad.yaml)",
        _good_recipe,
    ),
    "data_of_an_axolotl_config": Case(
        "spec", {"x.yaml": AXOLOTL}, ["data", "x.yaml"], "looks like an axolotl config"
    ),
    "usage_unknown_option": Case(
        "spec", {}, ["new", "--frc"], "error: tunegen new: No such option: --frc"
    ),
    "usage_missing_argument": Case("config", {}, ["run"], "tunegen run: Missing argument"),
    # -- configs and overrides --------------------------------------------------------------------
    "config_unresolvable_component": Case(
        "config",
        {},
        ["validate", "generated/bad.yaml", "model._component_=tunegen.nowhere.tiny"],
        "tunegen.nowhere.tiny",
        _good_recipe,
    ),
    "config_component_not_in_module": Case(
        "config",
        {},
        ["validate", "generated/bad.yaml", "loss._component_=torch.nn.NoSuchLoss"],
        "torch.nn.NoSuchLoss",
        _good_recipe,
    ),
    "config_loss_on_logits_in_a_chunked_recipe": Case(
        "config",
        {},
        _compiled("loss._component_=tunegen.runtime.losses.CrossEntropyLoss"),
        "set training.chunked_loss: false in the spec",
        _good_recipe,
    ),
    "config_loss_on_logits_validated": Case(
        "config",
        {},
        [
            "validate",
            "generated/bad.yaml",
            "loss._component_=tunegen.runtime.losses.CrossEntropyLoss",
        ],
        "CrossEntropyLoss.forward(logits, labels) cannot take (too many positional arguments)",
        _good_recipe,
    ),
    "config_override_without_value": Case(
        "config", {}, _compiled("training.lr"), "expected 'key.sub=value'", _good_recipe
    ),
    "config_override_unknown_key": Case(
        "config", {}, _compiled("training.lrr=1e-3"), "did you mean", _good_recipe
    ),
    "config_override_wrong_type": Case(
        "config", {}, _compiled("training.epochs=abc"), "training.epochs", _good_recipe
    ),
    "config_override_bad_yaml": Case(
        "config", {}, _compiled("training.lr=[1,"), "not valid YAML", _good_recipe
    ),
    "config_delete_missing_key": Case(
        "config", {}, _compiled("~training.nothing"), "training.nothing", _good_recipe
    ),
    "config_unknown_component_argument": Case(
        "config", {}, _compiled("+optimizer.momentum=0.9"), "momentum", _good_recipe
    ),
    "config_not_yaml": Case(
        "config", {"cfg.yaml": "model: [\n"}, ["validate", "cfg.yaml"], "bad YAML"
    ),
    "config_missing_file": Case(
        "config",
        {},
        ["run", "generated/bad.py", "--config", "nope.yaml"],
        "nope.yaml",
        _good_recipe,
    ),
    "config_missing_recipe": Case("config", {}, ["run", "nope.py"], "recipe file not found"),
    "config_given_twice": Case(
        "config",
        {},
        _compiled("--config", "generated/bad.yaml", "-c", "generated/bad.yaml"),
        "--config is given 2 times",
        _good_recipe,
    ),
    "config_unknown_option_under_run": Case(
        "config",
        {},
        _compiled("--frobnicate"),
        "tunegen run: no such option '--frobnicate' (see tunegen run --help)",
        _good_recipe,
    ),
    "config_override_typo_in_validate_of_a_spec": Case(
        "config",
        {"spec.yaml": SPEC, "train.jsonl": INSTRUCT},
        ["validate", "spec.yaml", "training.lrr=1e-3"],
        "did you mean 'training.lr'",
    ),
    "config_override_makes_the_data_too_small": Case(
        "config",
        {"spec.yaml": SPEC, "train.jsonl": INSTRUCT},
        ["validate", "spec.yaml", "training.batch_size=2"],
        "dataset: 1 samples are too few for one optimizer step",
    ),
    "config_add_an_existing_key": Case(
        "config", {}, _compiled("+training.lr=1e-3"), "already exists; drop the '+'", _good_recipe
    ),
    "config_override_out_of_range": Case(
        "config",
        {},
        _compiled("training.batch_size=0"),
        "bad.yaml: training.batch_size: must be at least 1, got 0",
        _good_recipe,
    ),
    "config_override_bad_choice": Case(
        "config",
        {},
        _compiled("environment.dtype=fp16"),
        "environment.dtype: 'fp16' is not one of fp32, bf16, auto; did you mean 'bf16'?",
        _good_recipe,
    ),
    "config_override_name_from_another_tool": Case(
        "config",
        {},
        _compiled("training.gradient_accumulation_steps=2"),
        "did you mean 'training.grad_accum'?",
        _good_recipe,
    ),
    "config_added_key_no_code_reads": Case(
        "config",
        {},
        ["validate", "generated/bad.yaml", "+training.foo=1"],
        "training.foo: no code in bad.py reads this key; remove it, or read it in the recipe "
        "(self.cfg.training.foo)",
        _good_recipe,
    ),
    "config_sets_an_argument_the_recipe_passes": Case(
        "config",
        {},
        _compiled("+optimizer.params=[]"),
        "optimizer.params: the recipe passes this argument of torch.optim.AdamW",
        _good_recipe,
    ),
    "spec_name_from_another_tool": Case(
        "spec",
        _spec_with("batch_size: 1", "micro_batch_size: 1"),
        ["new", "-s", "spec.yaml"],
        "training.micro_batch_size: unknown key; did you mean 'batch_size'?",
    ),
    # -- data ------------------------------------------------------------------------------------
    "data_malformed_json_line": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": INSTRUCT + "{oops\n"},
        ["data", "spec.yaml"],
        "train.jsonl:2: not valid JSON",
    ),
    "data_missing_field": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": '{"instruction": "x"}\n'},
        ["data", "spec.yaml"],
        "train.jsonl:1: missing field 'output'",
    ),
    "data_wrong_field_type": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": '{"instruction": "x", "output": 5}\n'},
        ["data", "spec.yaml"],
        "train.jsonl:1: field 'output' must be a string, got number",
    ),
    "data_record_not_an_object": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": "[1, 2]\n"},
        ["data", "spec.yaml"],
        "train.jsonl:1: a record must be a JSON object",
    ),
    "data_wrong_extension": Case(
        "data",
        {"spec.yaml": SPEC.replace("train.jsonl", "train.txt"), "train.txt": INSTRUCT},
        ["new", "-s", "spec.yaml"],
        "is not a .json or .jsonl file",
    ),
    "data_empty_file": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": "\n"},
        ["data", "spec.yaml"],
        "has no records",
    ),
    "data_every_sample_too_long": Case(
        "data",
        {
            "spec.yaml": SPEC.replace("max_seq_len: 64", "max_seq_len: 8"),
            "train.jsonl": '{"instruction": "' + "word " * 40 + '", "output": "x"}\n',
        },
        ["data", "spec.yaml"],
        "longer than max_seq_len=8",
    ),
    "data_malformed_val_file": Case(
        "data",
        {
            **_spec_with("max_seq_len: 64", "max_seq_len: 64, val_path: val.jsonl"),
            "val.jsonl": INSTRUCT + "{oops\n",
        },
        ["validate", "spec.yaml"],
        "val.jsonl:2: not valid JSON",
    ),
    "data_val_file_bad_records_at_run": Case(
        "data",
        {
            **_spec_with("max_seq_len: 64", "max_seq_len: 64, val_path: val.jsonl"),
            "val.jsonl": INSTRUCT,
        },
        ["run", "generated/bad.py", "val_dataset.source=other.jsonl"],
        "other.jsonl:1: missing field 'output'",
        lambda root: _compile_then_write(root, "other.jsonl", '{"instruction": "x"}\n'),
    ),
    "data_val_split_leaves_too_few": Case(
        "data",
        {
            **_spec_with("max_seq_len: 64", "max_seq_len: 64, val_split: 0.5"),
            "train.jsonl": INSTRUCT * 3,
        },
        ["validate", "spec.yaml", "training.batch_size=2"],
        "dataset: 1 samples (2 held out for validation) are too few for one optimizer step",
    ),
    "data_not_utf8": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": b'{"instruction": "\xff"}\n'},
        ["data", "spec.yaml"],
        "train.jsonl:1: not valid UTF-8",
    ),
    "data_chat_template_needs_special_tokens": Case(
        "data",
        {
            "spec.yaml": SPEC.replace("max_seq_len: 64", "format: chat, max_seq_len: 64"),
            "train.jsonl": '{"messages": [{"role": "robot", "content": "x"}]}\n',
        },
        ["data", "spec.yaml", "dataset.template=alpaca"],
        "chat template 'alpaca' writes the tokenizer's EOS token as text",
    ),
    "data_preference_missing_rejected": Case(
        "data",
        {
            "spec.yaml": SPEC.replace("method: full", "method: dpo").replace(
                "max_seq_len: 64", "format: preference, max_seq_len: 64"
            ),
            "train.jsonl": '{"prompt": "x", "chosen": "y"}\n',
        },
        ["data", "spec.yaml"],
        "train.jsonl:1:",
    ),
    "data_broken_json_found_by_validate": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": INSTRUCT + "{oops\n"},
        ["validate", "spec.yaml"],
        "train.jsonl:2: not valid JSON",
    ),
    "data_template_override_to_a_missing_chat_template": Case(
        "data",
        _chat_spec("chatml", '{"messages": [{"content": "hi"}]}\n'),
        ["validate", "spec.yaml", "dataset.template=tokenizer"],
        "chat template 'tokenizer' needs the tokenizer's own chat template",
    ),
    "data_text_record_without_its_column": Case(
        "data",
        {
            "spec.yaml": SPEC.replace("max_seq_len: 64", "format: text, max_seq_len: 64"),
            "train.jsonl": '{"text": "a"}\n{"body": "b"}\n',
        },
        ["validate", "spec.yaml"],
        "train.jsonl:2: missing field 'text'",
    ),
    "data_template_the_tokenizer_cannot_render": Case(
        "data",
        _chat_spec("llama3"),
        ["validate", "spec.yaml"],
        "chat template 'llama3' needs the special token '<|start_header_id|>'",
    ),
    "data_no_chat_template_in_the_tokenizer": Case(
        "data",
        _chat_spec("tokenizer"),
        ["validate", "spec.yaml"],
        "(chat_template.jinja, or chat_template in tokenizer_config.json)",
    ),
    "data_every_bad_record_listed": Case(
        "data",
        {"spec.yaml": SPEC, "train.jsonl": INSTRUCT + '{"instruction": 1}\n' * 25},
        ["validate", "spec.yaml"],
        "train.jsonl:2: field 'instruction' must be a string, got number",
        lines=21,  # 20 located lines, then "... and 5 more"
    ),
    "data_too_many_records_dropped": Case(
        "data",
        {
            "spec.yaml": SPEC.replace("max_seq_len: 64", "template: plain, max_seq_len: 64"),
            "train.jsonl": _instruct_rows(good=8, long=2),
        },
        ["validate", "spec.yaml"],
        "2 of 10 records (20.0%) train nothing and would be dropped, more than "
        "max_dropped_fraction=0.01 allows",
        lines=3,
    ),
    "data_export_exists": Case(
        "data",
        {},
        ["data", "spec.yaml", "--export", "rows.jsonl"],
        "rows.jsonl already exists; pass --force to overwrite it",
        _existing_export,
    ),
    "data_too_few_samples_for_a_step": Case(
        "data",
        {},
        _compiled("training.batch_size=4"),
        "too few for one optimizer step",
        _good_recipe,
    ),
    # -- checkpoints ------------------------------------------------------------------------------
    "checkpoint_missing_shard": Case(
        "checkpoint", {}, ["run", "generated/bad.py"], "model-", _missing_shard
    ),
    "checkpoint_shape_mismatch": Case(
        "checkpoint", {}, ["run", "generated/bad.py"], "q_proj.weight", _shape_mismatch
    ),
    "checkpoint_corrupt_shard": Case(
        "checkpoint", {}, ["run", "generated/bad.py"], "safetensors", _corrupt_shard
    ),
    "checkpoint_wrong_architecture": Case(
        "checkpoint", {}, ["new", "-s", "spec.yaml"], "GPT2LMHeadModel", _wrong_architecture
    ),
    "checkpoint_dir_without_config": Case(
        "checkpoint",
        {
            "ckpt/model.safetensors": b"",
            "spec.yaml": HF_SPEC,
            "train.jsonl": INSTRUCT,
            "tok.model": b"",
        },
        ["new", "-s", "spec.yaml"],
        "has no config.json",
    ),
    "checkpoint_corrupt_resume_state": Case(
        "checkpoint",
        {},
        _compiled("training.resume=auto", "training.max_steps=1"),
        "not a complete checkpoint",
        _broken_resume,
    ),
    "checkpoint_resume_required_but_none": Case(
        "checkpoint",
        {},
        _compiled("training.resume=true"),
        "holds no complete checkpoint",
        _good_recipe,
    ),
    "checkpoint_resume_dir_missing": Case(
        "checkpoint", {}, _compiled("training.resume=runs/none"), "runs/none", _good_recipe
    ),
    "checkpoint_resume_with_another_batch_size": Case(
        "checkpoint",
        {},
        _compiled("training.resume=auto", "training.batch_size=2"),
        "set training.batch_size=1 to resume it",
        _trained_recipe,
    ),
    "checkpoint_export_dir_of_another_run": Case(
        "checkpoint",
        {"elsewhere/config.json": "{}"},
        _compiled("export.output_dir=elsewhere"),
        "export.output_dir: elsewhere already exists",
        _good_recipe,
    ),
    # -- tokenizers -------------------------------------------------------------------------------
    "tokenizer_missing_file": Case(
        "tokenizer",
        _spec_with("model: tiny", "model: tiny\ntokenizer: nope.model"),
        ["new", "-s", "spec.yaml"],
        "tokenizer: file 'nope.model' not found",
    ),
    "tokenizer_corrupt_sentencepiece": Case(
        "tokenizer",
        {**_spec_with("model: tiny", "model: tiny\ntokenizer: tok.model"), "tok.model": b"junk"},
        ["data", "spec.yaml"],
        "tok.model",
    ),
    "tokenizer_corrupt_json": Case(
        "tokenizer",
        {
            **_spec_with("model: tiny", "model: tiny\ntokenizer: tok"),
            "tok/tokenizer.json": "{not json",
        },
        ["data", "spec.yaml"],
        "tokenizer.json",
    ),
    "tokenizer_json_not_a_tokenizer": Case(
        "tokenizer",
        {
            **_spec_with("model: tiny", "model: tiny\ntokenizer: tok"),
            "tok/tokenizer.json": '{"version": "1.0"}',
        },
        ["data", "spec.yaml"],
        "tokenizer.json",
    ),
    "tokenizer_dir_empty": Case(
        "tokenizer",
        {**_spec_with("model: tiny", "model: tiny\ntokenizer: tok"), "tok/readme.txt": "x"},
        ["data", "spec.yaml"],
        "tok",
    ),
    # -- update and diff (regenerating an edited recipe) --------------------------------------------
    "update_recipe_does_not_parse": Case(
        "update",
        {},
        ["update", "generated/bad.py"],
        "generated/bad.py:",
        setup=_edited_then(lambda w: (w / "generated/bad.py").write_text("def broken(:\n")),
    ),
    "update_without_metadata": Case(
        "update",
        {},
        ["update", "generated/bad.py"],
        "no tunegen metadata",
        setup=_edited_then(lambda w: shutil.rmtree(w / "generated/.tunegen")),
    ),
    "diff_without_metadata": Case(
        "update",
        {},
        ["diff", "generated/bad.py"],
        "no tunegen metadata",
        setup=_edited_then(lambda w: shutil.rmtree(w / "generated/.tunegen")),
    ),
    "update_metadata_of_another_file": Case(
        "update",
        {},
        ["update", "generated/other.py"],
        "is for bad.py, not this file",
        setup=_edited_then(
            lambda w: (
                (w / "generated/bad.py").rename(w / "generated/other.py"),
                (w / "generated/.tunegen/bad").rename(w / "generated/.tunegen/other"),
            )
        ),
    ),
    "update_spec_with_another_name": Case(
        "update",
        {"other.yaml": SPEC.replace("name: bad", "name: other"), "train.jsonl": INSTRUCT},
        ["update", "generated/bad.py", "--spec", "other.yaml"],
        "set name: bad in it",
        setup=_good_recipe,
    ),
    "update_spec_gone": Case(
        "update",
        {},
        ["update", "generated/bad.py"],
        "spec file not found; pass --spec SPEC",
        setup=_edited_then(lambda w: (w / "spec.yaml").unlink()),
    ),
    "update_before_resolving_conflicts": Case(
        "update",
        {},
        ["update", "generated/bad.py"],
        "--resolved",
        setup=_edited_then(_left_conflicts),
    ),
    "update_resolved_with_markers_left": Case(
        "update",
        {},
        ["update", "generated/bad.py", "--resolved"],
        "generated/bad.yaml:",
        setup=_edited_then(_left_conflicts),
    ),
    "update_recipe_not_utf8": Case(
        "update",
        {},
        ["update", "generated/bad.py"],
        "not UTF-8 text",
        setup=_edited_then(lambda w: (w / "generated/bad.py").write_bytes(b"x = '\xff'\n")),
    ),
    "update_resolved_with_nothing_pending": Case(
        "update",
        {},
        ["update", "generated/bad.py", "--resolved"],
        "nothing to do",
        setup=_good_recipe,
    ),
    "update_a_config_instead_of_a_recipe": Case(
        "update",
        {},
        ["update", "generated/bad.yaml"],
        "pass the generated recipe (.py)",
        setup=_good_recipe,
    ),
    # -- tunegen plot ------------------------------------------------------------------------------
    "plot_no_such_run_dir": Case("plot", {}, ["plot", "runs/nope"], "runs/nope: no such dir"),
    "plot_dir_without_metrics": Case(
        "plot", {"runs/a/notes.txt": "x"}, ["plot", "runs/a"], "runs/a: no metrics.jsonl in it"
    ),
    "plot_metrics_not_json": Case(
        "plot",
        {"runs/a/metrics.jsonl": '{"step": 1, "loss": 2.0}\n{"step": 2,\n'},
        ["plot", "runs/a"],
        "runs/a/metrics.jsonl:2: not a JSON line",
    ),
    "plot_metrics_without_steps": Case(
        "plot",
        {"runs/a/metrics.jsonl": '{"event": "resume", "step": 3}\n'},
        ["plot", "runs/a"],
        "runs/a/metrics.jsonl: no step records yet",
    ),
    # -- tunegen import ----------------------------------------------------------------------------
    "import_missing_file": Case("import", {}, ["import", "nope.yaml"], "nope.yaml: file not found"),
    "import_not_yaml": Case(
        "import", {"x.yaml": "model: [1, 2\n"}, ["import", "x.yaml"], "x.yaml:2: not valid YAML"
    ),
    "import_neither_style": Case(
        "import",
        {"x.yaml": "foo: 1\nbar: 2\n"},
        ["import", "x.yaml"],
        "x.yaml: neither style (keys foo, bar); tunegen import reads a torchtune recipe config",
    ),
    "import_a_tunegen_spec": Case(
        "import", {"spec.yaml": SPEC}, ["import", "spec.yaml"], "already a tunegen spec"
    ),
    "import_torchtune_vision_model": Case(
        "import",
        {
            "x.yaml": TORCHTUNE.replace(
                "llama3_2.lora_llama3_2_1b", "llama3_2_vision.lora_llama3_2_vision_11b"
            )
        },
        ["import", "x.yaml"],
        "lora_llama3_2_vision_11b is a vision model; tunegen trains text models (Llama 2,",
    ),
    "import_axolotl_vision_model": Case(
        "import",
        {
            "x.yaml": AXOLOTL.replace(
                "NousResearch/Llama-2-7b-hf", "meta-llama/Llama-3.2-11B-Vision"
            )
        },
        ["import", "x.yaml"],
        "base_model meta-llama/Llama-3.2-11B-Vision is a vision model; tunegen trains Llama",
    ),
    "import_unsupported_family": Case(
        "import",
        {"x.yaml": TORCHTUNE.replace("llama3_2.lora_llama3_2_1b", "gemma.lora_gemma_2b")},
        ["import", "x.yaml"],
        "model family gemma (model._component_ torchtune.models.gemma.lora_gemma_2b) is not "
        "supported; tunegen trains Llama 2",
    ),
    "import_ppo_recipe": Case(
        "import",
        {"x.yaml": TORCHTUNE + "loss:\n  _component_: torchtune.rlhf.loss.PPOLoss\n"},
        ["import", "x.yaml"],
        "loss._component_ PPOLoss is not supported (tunegen's preference method is DPO); "
        "tunegen imports full_finetune_*",
    ),
    "import_qat_recipe": Case(
        "import",
        {"x.yaml": TORCHTUNE + "quantizer:\n  _component_: torchtune.training.quantization.X\n"},
        ["import", "x.yaml"],
        "quantizer: this is a quantization-aware training (QAT) recipe config",
    ),
    "import_axolotl_unsupported_rl": Case(
        "import",
        {"x.yaml": AXOLOTL + "rl: kto\n"},
        ["import", "x.yaml"],
        "x.yaml: rl: kto is not supported; tunegen trains",
    ),
    "import_axolotl_unsupported_dataset_type": Case(
        "import",
        {"x.yaml": AXOLOTL.replace("type: alpaca", "type: oasst")},
        ["import", "x.yaml"],
        "datasets[0].type: oasst is not supported; tunegen reads alpaca,",
    ),
    "import_wrong_style_forced": Case(
        "import",
        {"x.yaml": TORCHTUNE},
        ["import", "x.yaml", "--from", "axolotl"],
        "x.yaml: base_model: missing; an axolotl config names its model there",
    ),
    "import_axolotl_forced_as_torchtune": Case(
        "import",
        {"x.yaml": AXOLOTL},
        ["import", "x.yaml", "--from", "torchtune"],
        "x.yaml: model._component_: missing; a torchtune config names its model builder there",
    ),
    "import_unsupported_dataset_builder": Case(
        "import",
        {"x.yaml": TORCHTUNE.replace("alpaca_cleaned_dataset", "samsum_dataset")},
        ["import", "x.yaml"],
        "dataset._component_ torchtune.datasets.samsum_dataset is not supported; tunegen imports "
        "torchtune.datasets.alpaca_dataset,",
    ),
    "import_output_exists": Case(
        "import",
        {"x.yaml": TORCHTUNE, "spec.yaml": "mine\n"},
        ["import", "x.yaml", "-o", "spec.yaml"],
        "spec.yaml: already exists; pass --force to overwrite it",
    ),
    "validate_imported_hub_model": Case(
        "spec",
        {
            "spec.yaml": SPEC.replace("model: tiny", "model: NousResearch/Llama-3.2-1B"),
            "train.jsonl": INSTRUCT,
        },
        ["validate", "spec.yaml"],
        "model: 'NousResearch/Llama-3.2-1B' is not a local path (no dir",
    ),
    "validate_imported_hub_dataset": Case(
        "spec",
        {"spec.yaml": SPEC.replace("path: train.jsonl", "path: yahma/alpaca-cleaned")},
        ["validate", "spec.yaml"],
        "data.path: 'yahma/alpaca-cleaned' is not a local file",
    ),
    # -- grpo: reward functions ---------------------------------------------------------------
    "spec_grpo_reward_file_missing": Case(
        "spec",
        _grpo("return [1.0] * len(completions)", GRPO_SPEC.replace("rewards.py:", "nope.py:")),
        ["new", "-s", "spec.yaml"],
        "spec.yaml:6: reward[0]: reward file 'nope.py' not found",
    ),
    "spec_grpo_reward_wrong_signature": Case(
        "spec",
        {
            **_grpo("return []"),
            "rewards.py": "def score(completions):\n    return [1.0] * len(completions)\n",
        },
        ["new", "-s", "spec.yaml"],
        "reward[0]: rewards.py:score: expected a function f(prompts, completions, **fields)",
    ),
    "spec_grpo_without_reward": Case(
        "spec",
        _grpo("return []", GRPO_SPEC.replace("reward: [rewards.py:score]\n", "")),
        ["new", "-s", "spec.yaml"],
        "method: grpo needs reward:",
    ),
    "spec_grpo_with_validation_data": Case(
        "spec",
        _grpo(
            "return [1.0] * len(completions)",
            GRPO_SPEC.replace("max_seq_len: 64}", "max_seq_len: 64, val_split: 0.5}"),
        ),
        ["new", "-s", "spec.yaml"],
        "data.val_split: method: grpo has no validation pass yet",
    ),
    "grpo_reward_wrong_length": Case(
        "config",
        _grpo("return [1.0]"),
        ["run", "generated/bad.py"],
        "step 1: reward rewards.py:score returned 1 scores for 2 completions",
        setup=_grpo_recipe,
    ),
    "grpo_reward_nan": Case(
        "config",
        _grpo("return [math.nan] * len(completions)"),
        ["run", "generated/bad.py"],
        "step 1: reward rewards.py:score returned nan for completion 0",
        setup=_grpo_recipe,
    ),
    # -- tunegen generate and tunegen eval ------------------------------------------------------------
    "generate_no_such_run_dir": Case(
        "generate", {}, ["generate", "runs/nope", "--prompt", "Hi"], "runs/nope: no such dir"
    ),
    "generate_dir_without_model": Case(
        "generate",
        {"runs/a/notes.txt": "x"},
        ["generate", "runs/a", "--prompt", "Hi"],
        "runs/a: no model in it",
    ),
    "generate_neither_prompt_nor_chat": Case(
        "generate", {}, ["generate", "tiny"], "give exactly one of --prompt TEXT or --chat"
    ),
    "generate_top_p_out_of_range": Case(
        "generate",
        {},
        ["generate", "tiny", "--prompt", "Hi", "--top-p", "1.5"],
        "--top-p must be in (0, 1], got 1.5",
    ),
    "generate_max_new_tokens_not_a_number": Case(
        "generate",
        {},
        ["generate", "tiny", "--prompt", "Hi", "--max-new-tokens", "many"],
        "Invalid value for '--max-new-tokens': Input should be a valid integer",
    ),
    "generate_negative_temperature": Case(
        "generate",
        {},
        ["generate", "tiny", "--prompt", "Hi", "--temperature", "-1"],
        "'--temperature': Input should be greater than or equal to 0",
    ),
    "generate_chat_without_a_template": Case(
        "generate", {}, ["generate", "tiny", "--chat"], "tiny: no chat template"
    ),
    "generate_chat_unknown_template": Case(
        "generate",
        {},
        ["generate", "tiny", "--chat", "--template", "vicuna"],
        "--template: unknown template 'vicuna'",
    ),
    "generate_adapter_without_its_base": Case(
        "generate",
        {"adapter/adapter_config.json": '{"base_model_name_or_path": "gone/base"}'},
        ["generate", "adapter", "--prompt", "Hi"],
        "base model 'gone/base' is not a local dir or built-in model",
    ),
    "eval_data_file_missing": Case(
        "eval", {}, ["eval", "tiny", "--data", "held.jsonl"], "--data: held.jsonl: file not found"
    ),
    "eval_neither_data_nor_tasks": Case(
        "eval", {}, ["eval", "tiny"], "give exactly one of --data FILE or --lm-eval-tasks T"
    ),
    "eval_unknown_format": Case(
        "eval",
        {"held.jsonl": INSTRUCT},
        ["eval", "tiny", "--data", "held.jsonl", "--format", "csv"],
        "--format: 'csv' is not one of text, instruct, chat",
    ),
    "eval_records_of_no_known_format": Case(
        "eval",
        {"held.jsonl": '{"question": "2+2?", "answer": "4"}\n'},
        ["eval", "tiny", "--data", "held.jsonl"],
        "held.jsonl: cannot tell its format from the first record's fields; pass --format",
    ),
    "eval_max_samples_zero": Case(
        "eval",
        {"held.jsonl": INSTRUCT},
        ["eval", "tiny", "--data", "held.jsonl", "--max-samples", "0"],
        "'--max-samples': Input should be greater than or equal to 1",
    ),
    # -- distributed (multi-process) specs and launches ----------------------------------------
    "spec_distributed_unknown_strategy": Case(
        "spec",
        _spec_with("name: bad", "name: bad\ndistributed: {strategy: ddp}"),
        ["new", "-s", "spec.yaml"],
        "distributed.strategy",
    ),
    "spec_distributed_with_validation": Case(
        "spec",
        {
            **_spec_with(
                "data: {path: train.jsonl, max_seq_len: 64}",
                "data: {path: train.jsonl, max_seq_len: 64, val_split: 0.5}\n"
                "distributed: {nproc_per_node: 2}",
            )
        },
        ["new", "-s", "spec.yaml"],
        "data.val_split: cannot run distributed: validation is not sharded yet",
    ),
    "spec_distributed_compile": Case(
        "spec",
        _spec_with(
            "training: {max_steps: 1, batch_size: 1}",
            "training: {max_steps: 1, batch_size: 1, compile: true}\n"
            "distributed: {nproc_per_node: 2}",
        ),
        ["new", "-s", "spec.yaml"],
        "training.compile: cannot run distributed",
    ),
    "spec_distributed_qlora": Case(
        "spec",
        _spec_with("method: full", "method: qlora\ndistributed: {nproc_per_node: 2}"),
        ["new", "-s", "spec.yaml"],
        "method: qlora cannot run distributed",
    ),
    "spec_distributed_packed": Case(
        "spec",
        _spec_with("max_seq_len: 64}", "max_seq_len: 64, packed: true}\ndistributed: {}"),
        ["new", "-s", "spec.yaml"],
        "data.packed: cannot run distributed",
    ),
    "spec_distributed_two_nodes_without_rendezvous": Case(
        "spec",
        _spec_with("name: bad", "name: bad\ndistributed: {nnodes: 2}"),
        ["new", "-s", "spec.yaml"],
        "distributed.rdzv_endpoint: needed with distributed.nnodes > 1",
    ),
    "spec_distributed_node_rank_out_of_range": Case(
        "spec",
        _spec_with(
            "name: bad", "name: bad\ndistributed: {nnodes: 2, node_rank: 2, rdzv_endpoint: h:1}"
        ),
        ["new", "-s", "spec.yaml"],
        "distributed.node_rank: 2 is not below distributed.nnodes (2)",
    ),
    "run_single_device_recipe_on_two_processes": Case(
        "config",
        {},
        ["run", "generated/bad.py", "--nproc-per-node", "2"],
        "--nproc-per-node: generated/bad.py is a single-device recipe",
        setup=_good_recipe,
    ),
    "run_more_processes_than_gpus": Case(
        "config",
        {},
        ["run", "generated/bad.py", "--nproc-per-node", "64", "environment.device=cuda"],
        "--nproc-per-node: 64 processes per node but",
        setup=_distributed_recipe,
    ),
    "run_two_nodes_without_rendezvous": Case(
        "config",
        {},
        ["run", "generated/bad.py", "--nnodes", "2"],
        "--rdzv-endpoint: a run on 2 nodes needs the rendezvous HOST:PORT",
        setup=_distributed_recipe,
    ),
    "spec_unknown_logging_backend": Case(
        "spec",
        _spec_with("name: bad", "name: bad\nlogging: {backends: [jsonl, tensorbord]}"),
        ["new", "-s", "spec.yaml"],
        "logging.backends[1]",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clean_line(name: str, workdir: Path, capsys) -> None:
    case = CASES[name]
    for relative, content in case.files.items():
        path = workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    if case.setup is not None:
        case.setup(workdir)
    capsys.readouterr()  # what the setup printed
    status = _call(case.argv)
    out, err = capsys.readouterr()
    assert status == 2, f"exit {status}; stderr: {err[-2000:]}"
    assert err.startswith("error: ") and err.count("\n") == case.lines, err
    assert case.expect in err, err
    assert "Traceback" not in out + err


def test_corpus_size_and_coverage() -> None:
    by_category: dict[str, int] = {}
    for case in CASES.values():
        by_category[case.category] = by_category.get(case.category, 0) + 1
    print(f"\nmalformed-input corpus: {len(CASES)} cases {by_category}")
    assert set(by_category) == {
        "spec",
        "config",
        "data",
        "checkpoint",
        "tokenizer",
        "update",
        "plot",
        "import",
        "generate",
        "eval",
    }
    assert len(CASES) >= 56
