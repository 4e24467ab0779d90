"""Stage 2: check a parsed spec against the schema and build a typed `Spec`.

Every problem is collected (not just the first) and located by file, line and key path, so a user
fixes a spec in one pass. Unknown keys (with did-you-mean), types, ranges and choices are the
schema's (`compiler.schema`, checked by pydantic); then come rules that span several keys, the
model registry and files on disk.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from tunegen.compiler.parse import ParsedSpec
from tunegen.compiler.schema import Spec, spec_errors, strip_optional, type_name, uses_adapters
from tunegen.runtime.config import did_you_mean, expand_home
from tunegen.runtime.errors import Problem, SpecError

__all__ = ["resolve_spec_path", "strip_optional", "type_name", "validate_spec"]

TEMPLATES_BY_FORMAT = {
    "instruct": ("alpaca", "plain"),
    "chat": ("alpaca", "llama3", "chatml", "mistral", "tokenizer"),
    # Plain-text preference records use an instruct template, conversations a chat template.
    "preference": ("alpaca", "plain", "llama3", "chatml", "mistral", "tokenizer"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def validate_spec(parsed: ParsedSpec) -> Spec:
    """Return the typed spec, or raise SpecError listing every problem, one per line."""
    spec, errors = spec_errors(parsed.values)
    problems = [_located(parsed, key_path, message) for key_path, message in errors]
    if spec is not None:
        _check_rules(spec, parsed, problems)
    if problems:
        raise SpecError("\n".join(str(p) for p in problems))
    return spec


def resolve_spec_path(parsed: ParsedSpec, value: str) -> Path:
    """A path written in the spec, resolved against the spec file's folder."""
    path = expand_home(value)
    return path if path.is_absolute() else parsed.path.parent / path


def _located(parsed: ParsedSpec, key_path: str, message: str) -> Problem:
    return Problem(key_path, message, str(parsed.path), parsed.line_of(key_path))


def _check_rules(spec: Spec, parsed: ParsedSpec, problems: list[Problem]) -> None:
    """Rules that involve several keys, the model registry, or the file system."""

    def problem(key_path: str, message: str) -> None:
        problems.append(_located(parsed, key_path, message))

    from tunegen.runtime.models import BUILTIN_MODELS, LINEAR_LAYER_NAMES

    if spec.model not in BUILTIN_MODELS:
        _check_checkpoint_dir(spec, parsed, problem)
    adapters = uses_adapters(spec)
    if not adapters and "lora" in parsed.values:
        problem("lora", f"only used with method: lora, dora or qlora; {_no_adapters(spec)}")
    if adapters and spec.lora is not None:
        _check_lora_targets(spec.lora.targets, LINEAR_LAYER_NAMES, problem)
    if spec.checkpoint.export_merged and not adapters:
        problem(
            "checkpoint.export_merged",
            f"only used with method: lora, dora or qlora; {_no_adapters(spec)}",
        )
    _check_method_sections(spec, parsed, problem)
    if spec.checkpoint.export_merged and not spec.checkpoint.export_hf:
        problem("checkpoint.export_merged", "needs checkpoint.export_hf: true")
    data = spec.data
    if data.format in ("text", "preference") and data.train_on_input:
        problem("data.train_on_input", "only used with data.format: instruct or chat")
    if data.format == "text" and "template" in parsed.values.get("data", {}):
        problem("data.template", "only used with data.format: instruct or chat")
    elif data.template not in TEMPLATES_BY_FORMAT.get(data.format, (data.template,)):
        choices = ", ".join(TEMPLATES_BY_FORMAT[data.format])
        problem("data.template", f"{data.template!r} is not a {data.format} template ({choices})")
    if data.format == "preference" and spec.method != "dpo":
        problem("data.format", f"preference data is for method: dpo (this spec has {spec.method})")
    if spec.method == "dpo" and data.format != "preference":
        problem(
            "data.format",
            "method: dpo needs data.format: preference (records with prompt, chosen, rejected)",
        )
    if data.packed and spec.method == "dpo":
        problem(
            "data.packed",
            "method: dpo does not pack: each chosen response is compared with its rejected one "
            "row by row; remove data.packed",
        )
    if data.bucket_by_length and data.packed:
        problem("data.bucket_by_length", "packed rows hold no padding to save; set one of the two")
    elif data.bucket_by_length and spec.method == "dpo":
        problem(
            "data.bucket_by_length",
            "method: dpo batches preference pairs as they come; remove data.bucket_by_length",
        )
    if data.format != "instruct" and spec.eval is not None:
        problem("eval", "exact-match evaluation needs data.format: instruct")
    training = spec.training
    if training.max_steps is not None and training.warmup_steps > training.max_steps:
        problem(
            "training.warmup_steps",
            f"{training.warmup_steps} warmup steps exceed training.max_steps ({training.max_steps})",
        )
    resume = spec.checkpoint.resume
    if (
        isinstance(resume, str)
        and resume != "auto"
        and not resolve_spec_path(parsed, resume).is_dir()
    ):
        problem(
            "checkpoint.resume",
            f"expected true, false, auto or an existing checkpoint dir; {resume!r} is none of these",
        )
    _check_files(spec, parsed, problem)
    _check_logging_backends(spec, problem)
    if spec.distributed is not None:
        _check_distributed(spec, problem)


# Why a part of a spec cannot run on several processes (yet), by the key that asks for it.
_NOT_DISTRIBUTED = {
    "qlora": "FSDP2 does not shard torchao's NF4 base weights here; use method: lora",
    "dpo": "its reference model is not sharded yet",
    "kd": "its teacher model is not sharded yet",
    "data.packed": "distributed runs shard samples with their own sampler; remove data.packed",
    "data.bucket_by_length": "distributed runs shard samples with their own sampler; remove"
    " data.bucket_by_length",
    "eval": "generation runs on one device; evaluate the exported model instead",
    "profiler": "profile a single-device run instead",
}


def _check_distributed(spec: Spec, problem: Any) -> None:
    """The launch settings fit together, and the spec asks only for what runs distributed."""
    distributed = spec.distributed
    if distributed.node_rank >= distributed.nnodes:
        problem(
            "distributed.node_rank",
            f"{distributed.node_rank} is not below distributed.nnodes ({distributed.nnodes})",
        )
    if distributed.nnodes > 1 and distributed.rdzv_endpoint is None:
        problem(
            "distributed.rdzv_endpoint",
            "needed with distributed.nnodes > 1: host:port of the rendezvous (e.g. the"
            " node_rank 0 machine, node0:29500)",
        )
    elif distributed.rdzv_endpoint is not None and not re.fullmatch(
        r"[^\s:]+:\d+", distributed.rdzv_endpoint
    ):
        problem(
            "distributed.rdzv_endpoint",
            f"{distributed.rdzv_endpoint!r} is not host:port (e.g. node0:29500)",
        )
    if spec.training.device not in ("auto", "cpu", "cuda"):
        problem(
            "training.device",
            f"{spec.training.device!r} cannot be shared by several processes; use auto, cuda"
            " (each process takes the GPU of its local rank) or cpu",
        )
    if spec.method in _NOT_DISTRIBUTED:
        problem("method", f"{spec.method} cannot run distributed: {_NOT_DISTRIBUTED[spec.method]}")
    asked = {
        "data.packed": spec.data.packed,
        "data.bucket_by_length": spec.data.bucket_by_length,
        "eval": spec.eval is not None,
        "profiler": spec.profiler is not None,
    }
    for key, on in asked.items():
        if on:
            problem(key, f"cannot run distributed: {_NOT_DISTRIBUTED[key]}")


def _check_logging_backends(spec: Spec, problem: Any) -> None:
    """Each chosen metrics backend's library is installed (each is an optional extra)."""
    from tunegen.runtime.loggers import missing_extra

    for i, backend in enumerate(spec.logging.backends):
        why = missing_extra(backend)
        if why is not None:
            problem(f"logging.backends[{i}]", why)


def _no_adapters(spec: Spec) -> str:
    """Why this spec trains no adapters, for the end of an error message."""
    if spec.method in ("dpo", "kd"):
        return f"with method: {spec.method}, set {spec.method}.use_lora: true to train adapters"
    return f"this spec has method: {spec.method}, which trains every weight"


def _check_method_sections(spec: Spec, parsed: ParsedSpec, problem: Any) -> None:
    """Each method's own section belongs to that method, and its settings fit together."""
    for section in ("dpo", "kd"):
        if section in parsed.values and spec.method != section:
            problem(section, f"only used with method: {section} (this spec has {spec.method})")
    lora_keys = parsed.values.get("lora") or {}
    if spec.method == "dora" and "use_dora" in lora_keys and not spec.lora.use_dora:
        problem(
            "lora.use_dora", "method: dora always uses DoRA; remove the key or use method: lora"
        )
    dpo = spec.dpo
    if spec.method == "dpo" and dpo is not None and dpo.loss_type == "ipo" and dpo.label_smoothing:
        problem("dpo.label_smoothing", "only used with dpo.loss_type: sigmoid")
    if spec.method == "kd":
        if spec.kd is None:
            problem("method", "kd needs a kd section with kd.teacher (a checkpoint dir)")
        else:
            _check_teacher(spec, parsed, problem)


def _check_teacher(spec: Spec, parsed: ParsedSpec, problem: Any) -> None:
    """The teacher is a supported checkpoint dir whose vocabulary is the student's."""
    from tunegen.runtime.hf_checkpoint import CONFIG_FILE
    from tunegen.runtime.models import BUILTIN_MODELS

    teacher = spec.kd.teacher
    if teacher in BUILTIN_MODELS:
        problem(
            "kd.teacher",
            f"built-in {teacher!r} is randomly initialised; point the teacher at a trained "
            "checkpoint dir (e.g. runs/demo/hf_model, written by the demo)",
        )
        return
    config_file = resolve_spec_path(parsed, teacher) / CONFIG_FILE
    if not config_file.is_file():
        problem("kd.teacher", f"{teacher!r} is not a checkpoint dir with a {CONFIG_FILE}")
        return
    kwargs = _model_kwargs(config_file, "kd.teacher", spec, problem)
    if kwargs is None:
        return
    student_vocab = _vocab_size(spec, parsed)
    if student_vocab is not None and kwargs["vocab_size"] != student_vocab:
        problem(
            "kd.teacher",
            f"the teacher's vocabulary has {kwargs['vocab_size']} tokens, the student's "
            f"{student_vocab}: distillation needs the same tokenizer",
        )


def _model_kwargs(
    config_file: Path, key_path: str, spec: Spec, problem: Any
) -> dict[str, Any] | None:
    """The model a checkpoint's config.json describes, as `llama(...)` keyword arguments, or None
    after reporting at `key_path` why this runtime cannot build it. No weights are read."""
    from tunegen.runtime.errors import CheckpointError
    from tunegen.runtime.hf_checkpoint import model_kwargs_from_hf_config

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        _, kwargs = model_kwargs_from_hf_config(
            config, where=str(config_file), max_seq_len=spec.data.max_seq_len
        )
    except (CheckpointError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        problem(key_path, str(exc))
        return None
    return kwargs


def _vocab_size(spec: Spec, parsed: ParsedSpec) -> int | None:
    """The student model's vocabulary size (None if its config cannot be read)."""
    import torch

    from tunegen.runtime.models import BUILTIN_MODELS

    if spec.model in BUILTIN_MODELS:
        with torch.device("meta"):
            return BUILTIN_MODELS[spec.model]().vocab_size
    try:
        config_file = resolve_spec_path(parsed, spec.model) / "config.json"
        return int(json.loads(config_file.read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _not_a_model(name: str, folder: Path) -> str:
    """Why `model: name` is neither: the built-in names, and the dir it was looked for as, with a
    near sibling dir of that name if there is one (`Qwen2.5-0.5b` for `Qwen2.5-0.5B`)."""
    from tunegen.runtime.models import BUILTIN_MODELS

    close = _did_you_mean(name, BUILTIN_MODELS)
    names = ", ".join(sorted(BUILTIN_MODELS))
    parent = folder.parent
    siblings = [p.name for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    near = difflib.get_close_matches(folder.name, siblings, n=1, cutoff=0.6)
    dir_hint = f"; did you mean the dir {(parent / near[0]).as_posix()!r}?" if near else ""
    return (
        f"{name!r} is not a built-in model{close} (built-in: {names}) nor a checkpoint dir "
        f"(no dir {folder.as_posix()!r}; a path is relative to the spec's folder){dir_hint}"
    )


def _check_checkpoint_dir(spec: Spec, parsed: ParsedSpec, problem: Any) -> None:
    """`model` names no built-in model, so it must be a supported Hugging Face checkpoint dir."""
    from tunegen.runtime.hf_checkpoint import CONFIG_FILE

    folder = resolve_spec_path(parsed, spec.model)
    if not folder.is_dir():
        problem("model", _not_a_model(spec.model, folder))
        return
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        problem("model", f"checkpoint dir {spec.model!r} has no {CONFIG_FILE}")
        return
    if _model_kwargs(config_file, "model", spec, problem) is None:
        return
    if spec.tokenizer is None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problem(
            "tokenizer",
            f"checkpoint dir {spec.model!r} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); set tokenizer:",
        )


def _check_lora_targets(targets: list[str], known: tuple[str, ...], problem: Any) -> None:
    if not targets:
        problem("lora.targets", "needs at least one layer name")
    for index, target in enumerate(targets):
        if target not in known:
            problem(
                f"lora.targets[{index}]",
                f"unknown layer {target!r}{_did_you_mean(target, known)} (choose from {', '.join(known)})",
            )
    if len(set(targets)) != len(targets):
        problem("lora.targets", "lists a layer more than once")


def _check_files(spec: Spec, parsed: ParsedSpec, problem: Any) -> None:
    files = {"data.path": spec.data.path, "tokenizer": spec.tokenizer}
    if spec.eval is not None:
        files["eval.path"] = spec.eval.path
    for key_path, value in files.items():
        if value is None:
            continue
        path = resolve_spec_path(parsed, value)
        if key_path == "tokenizer" and path.is_dir():
            continue  # a tokenizer dir: load_tokenizer finds its files, or says what is missing
        if not path.is_file():
            problem(key_path, f"file {value!r} not found (looked in {path.parent})")
        elif key_path != "tokenizer" and path.suffix not in (".json", ".jsonl"):
            problem(key_path, f"{value!r} is not a .json or .jsonl file")


def _did_you_mean(word: str, options: Any) -> str:
    return did_you_mean(word, [str(o) for o in options], cutoff=0.7)
