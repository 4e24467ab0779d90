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
from tunegen.compiler.schema import (
    GrpoSpec,
    Spec,
    spec_errors,
    strip_optional,
    type_name,
    uses_adapters,
    uses_validation,
)
from tunegen.runtime.config import did_you_mean, expand_home
from tunegen.runtime.errors import Problem, SpecError

__all__ = ["resolve_spec_path", "strip_optional", "type_name", "validate_spec"]

TEMPLATES_BY_FORMAT = {
    "instruct": ("alpaca", "plain"),
    "chat": ("alpaca", "llama3", "chatml", "mistral", "tokenizer"),
    # Plain-text preference records use an instruct template, conversations a chat template.
    "preference": ("alpaca", "plain", "llama3", "chatml", "mistral", "tokenizer"),
    "prompts": ("alpaca", "plain", "llama3", "chatml", "mistral", "tokenizer"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# `org/name`: how Hugging Face hub ids read (tunegen import keeps them; tunegen reads local files).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


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
    if data.format in ("text", "preference", "prompts") and data.train_on_input:
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
    _check_grpo(spec, parsed, problem)
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
    _check_validation(spec, problem)
    _check_files(spec, parsed, problem)
    _check_logging_backends(spec, problem)
    _check_speed_features(spec, problem)
    if spec.distributed is not None:
        _check_distributed(spec, problem)


def _check_speed_features(spec: Spec, problem: Any) -> None:
    """training.compile, chunked_loss, optimizer_in_bwd and tokens_per_batch against the rest."""
    training, data = spec.training, spec.data
    if training.compile:
        from tunegen.runtime.compiling import missing_compiler

        device = "cpu" if training.device in ("auto", "cpu") else training.device.split(":")[0]
        why = missing_compiler(device)
        if why is not None:
            problem("training.compile", f"{why}; install one or set training.compile: false")
    if training.chunked_loss is True and spec.method in ("dpo", "kd", "grpo"):
        problem(
            "training.chunked_loss",
            f"method: {spec.method} reads the whole logits; set training.chunked_loss: auto",
        )
    if training.optimizer_in_bwd:
        _check_optimizer_in_bwd(spec, problem)
    budget = training.tokens_per_batch
    if budget is None:
        return
    if spec.method == "dpo":
        problem("training.tokens_per_batch", "method: dpo batches preference pairs; remove it")
    elif data.packed or data.bucket_by_length:
        which = "data.packed" if data.packed else "data.bucket_by_length"
        problem("training.tokens_per_batch", f"batches by tokens itself; remove {which}")
    elif budget < data.max_seq_len:
        problem(
            "training.tokens_per_batch",
            f"{budget} is less than data.max_seq_len ({data.max_seq_len}): a sample of that "
            "length would not fit a batch",
        )


def _check_optimizer_in_bwd(spec: Spec, problem: Any) -> None:
    """Stepping inside backward() needs each step's whole, unclipped gradient in one pass."""
    training = spec.training
    if spec.method != "full":
        problem("training.optimizer_in_bwd", f"only for method: full (this spec has {spec.method})")
    conflicts = [
        key
        for key, clash in (
            ("training.grad_accum", training.grad_accum > 1),
            ("training.clip_grad_norm", training.clip_grad_norm is not None),
        )
        if clash
    ]
    if conflicts:
        problem(
            "training.optimizer_in_bwd",
            f"cannot be used with {' or '.join(conflicts)} (each parameter steps as soon as its "
            "gradient is ready); set training.grad_accum: 1 and training.clip_grad_norm: null",
        )
    if training.on_nonfinite_loss == "skip":
        problem(
            "training.optimizer_in_bwd",
            "cannot skip a step that backward() already applied; set "
            "training.on_nonfinite_loss: stop",
        )


def _check_validation(spec: Spec, problem: Any) -> None:
    """One source of validation data, and the keys that use it only with one."""
    if spec.data.val_path is not None and spec.data.val_split is not None:
        problem("data.val_split", "set data.val_path or data.val_split, not both")
    if uses_validation(spec) and spec.method == "grpo":
        key = "data.val_path" if spec.data.val_path is not None else "data.val_split"
        problem(
            key,
            "method: grpo has no validation pass yet (its held-out measure is the mean reward: "
            "see docs/grpo.md); remove the key",
        )
    if uses_validation(spec):
        return
    needs = "needs validation data: set data.val_path (a file) or data.val_split (a share)"
    for key in ("val_every_n_steps", "val_max_batches"):
        if getattr(spec.training, key) is not None:
            problem(f"training.{key}", needs)
    if spec.checkpoint.keep_best is not None:
        problem("checkpoint.keep_best", needs)


# Why a part of a spec cannot run on several processes (yet), by the key that asks for it.
_NOT_DISTRIBUTED = {
    "qlora": "FSDP2 does not shard torchao's NF4 base weights here; use method: lora",
    "dpo": "its reference model is not sharded yet",
    "kd": "its teacher model is not sharded yet",
    "data.packed": "distributed runs shard samples with their own sampler; remove data.packed",
    "data.bucket_by_length": "distributed runs shard samples with their own sampler; remove"
    " data.bucket_by_length",
    "grpo": "its sampling and reference model are not sharded yet",
    "eval": "generation runs on one device; evaluate the exported model instead",
    "profiler": "profile a single-device run instead",
    "data.val_path": "validation is not sharded yet; run tunegen eval on the exported model",
    "data.val_split": "validation is not sharded yet; run tunegen eval on the exported model",
    "training.tokens_per_batch": "distributed runs shard samples with their own sampler; remove"
    " training.tokens_per_batch",
    "training.compile": "compiling sharded blocks is not tested yet; remove training.compile",
    "training.optimizer_in_bwd": "FSDP2 reduces gradients after backward(); remove"
    " training.optimizer_in_bwd",
    "training.chunked_loss": "the output projection is sharded; set training.chunked_loss: auto",
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
        "data.val_path": spec.data.val_path is not None,
        "data.val_split": spec.data.val_split is not None,
        "training.tokens_per_batch": spec.training.tokens_per_batch is not None,
        "training.compile": spec.training.compile,
        "training.optimizer_in_bwd": spec.training.optimizer_in_bwd,
        "training.chunked_loss": spec.training.chunked_loss is True,
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
    if spec.method in ("dpo", "kd", "grpo"):
        return f"with method: {spec.method}, set {spec.method}.use_lora: true to train adapters"
    return f"this spec has method: {spec.method}, which trains every weight"


def _check_method_sections(spec: Spec, parsed: ParsedSpec, problem: Any) -> None:
    """Each method's own section belongs to that method, and its settings fit together."""
    for section, method in (("dpo", "dpo"), ("kd", "kd"), ("grpo", "grpo"), ("reward", "grpo")):
        if section in parsed.values and spec.method != method:
            problem(section, f"only used with method: {method} (this spec has {spec.method})")
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


def _check_grpo(spec: Spec, parsed: ParsedSpec, problem: Any) -> None:
    """GRPO's data, reward functions and settings fit together (prompts data <-> method: grpo)."""
    data = spec.data
    if data.format == "prompts" and spec.method != "grpo":
        problem("data.format", f"prompts data is for method: grpo (this spec has {spec.method})")
    if spec.method != "grpo":
        return
    if data.format != "prompts":
        problem(
            "data.format",
            "method: grpo needs data.format: prompts (records with a prompt or messages)",
        )
    for key in ("packed", "bucket_by_length"):
        if getattr(data, key):
            problem(f"data.{key}", f"method: grpo samples its own completions; remove data.{key}")
    grpo = spec.grpo or GrpoSpec()
    if grpo.max_new_tokens >= data.max_seq_len:
        problem(
            "grpo.max_new_tokens",
            f"{grpo.max_new_tokens} leaves no room for a prompt within data.max_seq_len "
            f"({data.max_seq_len})",
        )
    if grpo.num_iterations > 1 and spec.training.on_nonfinite_loss == "skip":
        problem(
            "training.on_nonfinite_loss",
            "skip drops a whole step, but with grpo.num_iterations > 1 earlier updates of the "
            "step are already taken; use stop or grpo.num_iterations: 1",
        )
    if not spec.reward:
        problem(
            "reward" if "reward" in parsed.values else "method",
            "method: grpo needs reward: a list of reward functions, each FILE.py:FUNCTION "
            "(a file next to the spec)",
        )
        return
    for index, entry in enumerate(spec.reward):
        _check_reward(entry, f"reward[{index}]", parsed, problem)


def _check_reward(entry: Any, key_path: str, parsed: ParsedSpec, problem: Any) -> None:
    """A reward entry names FILE.py:FUNCTION; the file imports and the function takes
    `(prompts, completions, **fields)`. Importing runs the user's file, as the run will."""
    from tunegen.runtime.rewards import RewardError, load_reward_function, parse_reward_ref

    ref = entry if isinstance(entry, str) else entry.function
    where = key_path if isinstance(entry, str) else f"{key_path}.function"
    try:
        path, function = parse_reward_ref(ref)
    except ValueError as exc:
        problem(where, str(exc))
        return
    try:
        load_reward_function(resolve_spec_path(parsed, path), function, shown_as=path)
    except RewardError as exc:
        problem(where, str(exc))


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
    if not near and _HUB_ID.fullmatch(name):
        local = f"models/{name.rpartition('/')[2]}"
        return (
            f"{name!r} is not a local path (no dir {folder.as_posix()!r}); a Hugging Face hub id "
            f"is not downloaded by tunegen: run hf download {name} --local-dir {local} "
            f"in the spec's folder, then set model: {local}"
        )
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
    files = {
        "data.path": spec.data.path,
        "data.val_path": spec.data.val_path,
        "tokenizer": spec.tokenizer,
    }
    if spec.eval is not None:
        files["eval.path"] = spec.eval.path
    for key_path, value in files.items():
        if value is None:
            continue
        path = resolve_spec_path(parsed, value)
        if key_path == "tokenizer" and path.is_dir():
            continue  # a tokenizer dir: load_tokenizer finds its files, or says what is missing
        if not path.is_file() and key_path != "tokenizer" and _looks_like_hub_dataset(value):
            problem(key_path, _hub_dataset(value, key_path, path))
        elif not path.is_file():
            problem(key_path, f"file {value!r} not found (looked in {path.parent})")
        elif key_path != "tokenizer" and path.suffix not in (".json", ".jsonl"):
            problem(key_path, f"{value!r} is not a .json or .jsonl file")


def _looks_like_hub_dataset(value: str) -> bool:
    """`org/name` without a data file's suffix: a Hugging Face hub data set's id."""
    return _HUB_ID.fullmatch(value) is not None and Path(value).suffix not in (".json", ".jsonl")


def _hub_dataset(value: str, key_path: str, path: Path) -> str:
    """What to do about a data path that reads as a hub data set id: export it to JSONL."""
    local = f"data/{value.rpartition('/')[2]}.jsonl"
    export = f"datasets.load_dataset({value!r}, split='train').to_json({local!r})"
    return (
        f"{value!r} is not a local file (looked in {path.parent}); a Hugging Face hub data set "
        f'is not downloaded by tunegen: export it to JSONL (python -c "import datasets; '
        f"{export}\" in the spec's folder), then set {key_path}: {local}"
    )


def _did_you_mean(word: str, options: Any) -> str:
    return did_you_mean(word, [str(o) for o in options], cutoff=0.7)
