"""Stage 3: decide what the generated recipe and config contain.

The plan is the only place where spec values turn into decisions: which features the recipe carries
(a full fine-tune gets no LoRA code, a spec without `eval` gets no evaluation code), which runtime
components the config names, and every config value with its comment. Templates only loop over it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tunegen.compiler.parse import ParsedSpec
from tunegen.compiler.schema import (
    CheckpointSpec,
    DataSpec,
    DistributedSpec,
    DpoSpec,
    EvalSpec,
    GrpoSpec,
    KdSpec,
    LoggingSpec,
    LoraSpec,
    ProfilerSpec,
    RewardSpec,
    Spec,
    TrainingSpec,
    doc_of,
    uses_adapters,
    uses_dora,
    uses_validation,
)
from tunegen.compiler.spec_check import resolve_spec_path

__all__ = ["Entry", "Plan", "Section", "make_plan", "recipe_for", "tunegen_version"]

# Recipe class and docstring summary by (objective, how weights train).
RECIPES = {
    ("sft", "full"): (
        "FullFinetuneRecipe",
        "Full fine-tuning: every weight of the model is trained.",
    ),
    ("sft", "lora"): (
        "LoRAFinetuneRecipe",
        "LoRA fine-tuning: low-rank adapters train while the base weights stay frozen.",
    ),
    ("sft", "dora"): (
        "DoRAFinetuneRecipe",
        "DoRA fine-tuning: adapters and per-row magnitudes train; the base stays frozen.",
    ),
    ("sft", "qlora"): (
        "QLoRAFinetuneRecipe",
        "QLoRA fine-tuning: LoRA adapters train on a frozen 4-bit NF4 base model.",
    ),
    ("dpo", "full"): (
        "FullDPORecipe",
        "DPO: the whole model learns to prefer chosen over rejected responses.",
    ),
    ("dpo", "lora"): (
        "LoRADPORecipe",
        "DPO with LoRA: adapters learn to prefer chosen over rejected responses.",
    ),
    ("kd", "full"): (
        "FullKDRecipe",
        "Knowledge distillation: the student learns from data and a teacher's logits.",
    ),
    ("kd", "lora"): (
        "LoRAKDRecipe",
        "Distillation with LoRA: adapters learn from data and a teacher's logits.",
    ),
    ("grpo", "full"): (
        "FullGRPORecipe",
        "GRPO: the whole model learns from rewards of its own sampled completions.",
    ),
    ("grpo", "lora"): (
        "LoRAGRPORecipe",
        "GRPO with LoRA: adapters learn from rewards of the model's own completions.",
    ),
}
SCHEDULERS = {
    "cosine": "tunegen.runtime.schedulers.cosine_with_warmup",
    "linear": "tunegen.runtime.schedulers.linear_with_warmup",
    "constant": "tunegen.runtime.schedulers.constant_with_warmup",
}
# Everything a run writes lives under the checkpointer's output_dir, so overriding that one key
# moves the whole run.
RUN_DIR = "${checkpointer.output_dir}"
DATASETS = {
    "instruct": "tunegen.runtime.data.InstructDataset",
    "chat": "tunegen.runtime.data.ChatDataset",
    "text": "tunegen.runtime.data.TextDataset",
    "preference": "tunegen.runtime.data.PreferenceDataset",
    "prompts": "tunegen.runtime.data.prompts.PromptDataset",
}
DATASET_COMMENTS = {
    "instruct": "training samples, tokenized with prompt tokens masked out of the loss",
    "chat": "conversations, tokenized with the loss on the assistant replies only",
    "text": "plain text; every token carries loss",
    "preference": "prompts with a chosen and a rejected response, each masked to its response",
    "prompts": "prompts to sample completions for; their other fields go to the rewards",
}


@dataclass(frozen=True)
class Entry:
    """One config key: its value (a YAML scalar or list) and a one-line comment."""

    key: str
    value: Any
    comment: str = ""


@dataclass(frozen=True)
class Section:
    """A config mapping: a comment line, then its entries and sub-sections in order."""

    key: str
    comment: str
    items: tuple[Entry | Section, ...]


@dataclass(frozen=True)
class Plan:
    """Everything the templates need, decided from a validated spec."""

    name: str
    method: str
    recipe_class: str
    summary: str
    objective: str  # what the loss is: "sft" (cross-entropy), "dpo", "kd" or "grpo"
    dora: bool  # the adapters are DoRA (features/adapters.py.j2 asks)
    packed: bool  # batches are packed rows (the objectives' collate and forward ask)
    # The feature parts (templates/features/<name>.py.j2) the recipe carries, in the order their
    # code appears at every hook; templates never test a flag to add a feature's code.
    features: tuple[str, ...]
    saved_weights: str  # what save_checkpoint writes: "adapter" or "model"
    spec_source: str
    spec_hash: str
    version: str
    recipe_path: str
    config_path: str
    config_sections: tuple[Section, ...]
    # The loss reads hidden states and projects them chunk by chunk (training.chunked_loss).
    chunked_loss: bool = False
    # Token-budget batches: a DataLoader item is a whole batch (training.tokens_per_batch).
    token_budget: bool = False
    # Each parameter steps inside backward() (training.optimizer_in_bwd).
    optimizer_in_bwd: bool = False


def recipe_for(objective: str, method: str, *, adapters: bool, dora: bool) -> tuple[str, str]:
    """The recipe class name and its one-line summary (the module and class docstrings' first
    line, so at most 80 characters: a test checks every combination)."""
    if not adapters:
        weights = "full"
    elif objective == "sft":
        weights = "qlora" if method == "qlora" else ("dora" if dora else "lora")
    else:
        weights = "lora"
    recipe_class, summary = RECIPES[objective, weights]
    if objective != "sft" and dora:
        summary = summary.replace("with LoRA", "with DoRA")
    return recipe_class, summary


def tunegen_version() -> str:
    """The installed tunegen version, written into every generated file's header."""
    try:
        return version("tunegen")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def make_plan(spec: Spec, parsed: ParsedSpec, *, recipe_path: Path, config_path: Path) -> Plan:
    """Decide the recipe's features and the config's contents for `spec`.

    `recipe_path` and `config_path` are where the files will be written; the headers show them in
    the run command.
    """
    objective = spec.method if spec.method in ("dpo", "kd", "grpo") else "sft"
    adapters, dora = uses_adapters(spec), uses_dora(spec)
    recipe_class, summary = recipe_for(objective, spec.method, adapters=adapters, dora=dora)
    return Plan(
        name=spec.name,
        method=spec.method,
        recipe_class=recipe_class,
        summary=summary,
        objective=objective,
        dora=dora,
        packed=spec.data.packed,
        features=_features(spec, objective, adapters),
        saved_weights="adapter" if adapters else "model",
        spec_source=_display_path(parsed.path),
        spec_hash=hashlib.sha256(parsed.text.encode("utf-8")).hexdigest()[:12],
        version=tunegen_version(),
        recipe_path=_display_path(recipe_path),
        config_path=_display_path(config_path),
        config_sections=_config_sections(spec, parsed, config_path.parent),
        chunked_loss=chunks_loss(spec),
        token_budget=spec.training.tokens_per_batch is not None,
        optimizer_in_bwd=spec.training.optimizer_in_bwd,
    )


def chunks_loss(spec: Spec) -> bool:
    """Whether the SFT loss is computed chunk by chunk from the hidden states: unless the spec
    says `false`, wherever it applies. It never builds the full fp32 logits (often a step's
    largest tensor) and skips the rows without a target, so it measured as fast or faster than
    the plain loss on CPU too (W2 LoRA: 1.17x, 10% less peak memory; docs/benchmarks.md),
    unlike torchtune's chunked loss, which projects every row and cost 6-19% on CPU."""
    if spec.method in ("dpo", "kd", "grpo"):  # their losses read the whole logits
        return False
    if spec.distributed is not None:  # FSDP2 gathers the output weight only in forward()
        return False
    return spec.training.chunked_loss is not False


def _features(spec: Spec, objective: str, adapters: bool) -> tuple[str, ...]:
    """The recipe's feature parts. The order is the order of their code at a shared hook: the
    model is checkpointed before it moves to the device, quantized after, adapters go on last."""
    training, checkpoint = spec.training, spec.checkpoint
    token_budget = training.tokens_per_batch is not None
    exports_full_model = checkpoint.export_hf and not adapters
    exports_adapter = checkpoint.export_hf and adapters
    exports_merged_model = exports_adapter and checkpoint.export_merged
    distributed = spec.distributed is not None
    chosen = {
        "activation_checkpointing": training.activation_checkpointing,
        "quantization": spec.method == "qlora",
        "adapters": adapters,
        "compile": training.compile,  # after the adapters: the blocks compile with them
        "full_weights": not adapters,
        # After the adapters (the model is sharded with them), before clipping (which needs
        # the gradients of the global batch); it brings its own sampler.
        "distributed": distributed,
        "samples": not (
            spec.data.packed or spec.data.bucket_by_length or token_budget or distributed
        ),
        "length_buckets": spec.data.bucket_by_length,
        "packed": spec.data.packed,
        "token_budget": token_budget,
        "reference_copy": _uses_reference(spec, objective) and not adapters,
        "reference_adapters_off": _uses_reference(spec, objective) and adapters,
        "clip_grad_norm": training.clip_grad_norm is not None,
        "optimizer_step": not training.optimizer_in_bwd,
        "optimizer_in_bwd": training.optimizer_in_bwd,
        "profiler": spec.profiler is not None,
        "nonfinite_skip": training.on_nonfinite_loss == "skip",
        "nonfinite_stop": training.on_nonfinite_loss != "skip",
        "export_hf": exports_full_model,
        "export_peft": exports_adapter,
        "export_merged": exports_merged_model,
        "eval": spec.eval is not None,
        # Validation during training, its data from a file or held out of the training data.
        "validation": uses_validation(spec),
        "val_file": spec.data.val_path is not None,
        "val_split": spec.data.val_split is not None,
        "keep_best": checkpoint.keep_best is not None,
    }
    return tuple(feature for feature, enabled in chosen.items() if enabled)


def _uses_reference(spec: Spec, objective: str) -> bool:
    """DPO always measures against a reference model; GRPO only for its KL term (beta > 0)."""
    if objective == "grpo":
        return (spec.grpo or GrpoSpec()).beta > 0
    return objective == "dpo"


def _config_sections(spec: Spec, parsed: ParsedSpec, config_dir: Path) -> tuple[Section, ...]:
    """The generated config, section by section in the order the recipe uses them.

    Paths are written relative to `config_dir`, the config file's folder (see `_config_path`).
    """
    training, data = spec.training, spec.data
    output_dir = _config_path(_output_dir(spec, parsed), config_dir)
    sections = [Section("model", "the model to fine-tune", _model_items(spec, parsed, config_dir))]
    if spec.method == "kd":
        sections.append(
            Section(
                "teacher_model",
                "the frozen teacher whose logits the student learns from",
                _checkpoint_model_items(
                    _config_path(resolve_spec_path(parsed, spec.kd.teacher), config_dir),
                    spec.data,
                ),
            )
        )
    sections.append(
        Section(
            "tokenizer", "turns text into token ids", _tokenizer_items(spec, parsed, config_dir)
        )
    )
    if uses_adapters(spec):
        lora = spec.lora or LoraSpec()
        sections.append(
            Section(
                "lora",
                "low-rank adapters added to the model's linear layers",
                tuple(
                    Entry(k, getattr(lora, k), doc_of(LoraSpec, k))
                    for k in ("rank", "alpha", "dropout", "targets")
                ),
            )
        )
    sections += [
        Section(
            "checkpointer",
            "writes checkpoints atomically under output_dir/step_NNNNNN",
            _checkpointer_items(spec, output_dir),
        ),
        Section(
            "dataset",
            DATASET_COMMENTS[data.format],
            _dataset_items(data, parsed, config_dir),
        ),
        *_val_dataset_sections(data, parsed, config_dir),
        Section("dataloader", "how samples are batched", _dataloader_items(data, training)),
        Section(
            "optimizer",
            "updates the trainable parameters",
            (
                _component("torch.optim.AdamW"),
                Entry("lr", "${training.lr}", "set in training.lr"),
                Entry("weight_decay", "${training.weight_decay}", "set in training.weight_decay"),
                Entry("fused", training.fused_optimizer, "one fused kernel per parameter step"),
            ),
        ),
        Section(
            "lr_scheduler",
            f"{training.scheduler} learning-rate schedule with linear warmup",
            (
                _component(SCHEDULERS[training.scheduler]),
                Entry("warmup_steps", "${training.warmup_steps}", "set in training.warmup_steps"),
            ),
        ),
        _loss_section(spec),
    ]
    if spec.method == "kd":
        sections.append(
            Section(
                "kd_loss",
                "KL(teacher || student) on the same tokens, summed",
                (
                    _component("tunegen.runtime.distillation.ForwardKLLoss"),
                    Entry("temperature", spec.kd.temperature, doc_of(KdSpec, "temperature")),
                ),
            )
        )
    if spec.method == "grpo":
        sections += _grpo_sections(spec, parsed, config_dir)
    sections.append(Section("training", "the optimisation loop", _training_items(spec)))
    if spec.checkpoint.export_hf:
        sections.append(
            Section(
                "export",
                "the final model in Hugging Face format",
                _export_items(spec, parsed, config_dir),
            )
        )
    if spec.eval is not None:
        sections.append(
            Section(
                "eval",
                EvalSpec.__doc__.strip().rstrip("."),
                _eval_items(spec.eval, data, parsed, config_dir),
            )
        )
    if spec.profiler is not None:
        sections.append(
            Section(
                "profiler",
                ProfilerSpec.__doc__.strip().rstrip("."),
                _profiler_items(spec.profiler),
            )
        )
    sections += [
        Section(
            "logging",
            "metrics go to the console and to a JSONL file in the run dir",
            _logging_items(spec.logging),
        ),
        Section(
            "environment",
            "where and how the run computes",
            (
                Entry("device", training.device, doc_of(TrainingSpec, "device")),
                Entry("dtype", training.dtype, doc_of(TrainingSpec, "dtype")),
                Entry("seed", training.seed, doc_of(TrainingSpec, "seed")),
            ),
        ),
    ]
    if spec.distributed is not None:
        sections.append(
            Section(
                "distributed",
                "processes and FSDP2 sharding; tunegen run launches them through torchrun",
                _distributed_items(spec.distributed),
            )
        )
    return tuple(sections)


def _checkpointer_class(spec: Spec) -> str:
    if spec.distributed is not None:
        return "tunegen.runtime.distributed_checkpoint.DistributedCheckpointer"
    return "tunegen.runtime.checkpointing.Checkpointer"


def _distributed_items(distributed: DistributedSpec) -> tuple[Entry, ...]:
    """The launch (read by tunegen run and checked by the recipe) and the FSDP2 options."""
    return tuple(
        Entry(key, getattr(distributed, key), doc_of(DistributedSpec, key))
        for key in (
            "nproc_per_node",
            "nnodes",
            "node_rank",
            "rdzv_endpoint",
            "reshard_after_forward",
            "cpu_offload",
        )
    )


def _logging_items(logging: LoggingSpec) -> tuple[Entry | Section, ...]:
    """The metric logger (with a section per extra backend), how often it logs, the console."""
    logger: tuple[Entry | Section, ...] = (
        _component("tunegen.runtime.metric_logging.MetricLogger"),
        Entry("log_dir", RUN_DIR, "metrics.jsonl is appended here"),
    )
    backends = [name for name in dict.fromkeys(logging.backends) if name != "jsonl"]
    if backends:
        logger += (
            Section(
                "backends",
                "each also receives every logged step",
                tuple(_backend_section(name) for name in backends),
            ),
        )
    return (
        Section("metric_logger", "", logger),
        Entry("every_n_steps", logging.every_n_steps, doc_of(LoggingSpec, "every_n_steps")),
        Entry("progress", logging.progress, doc_of(LoggingSpec, "progress")),
    )


# spec backend name -> (class, its directory under the run dir, what the user runs to look)
_BACKENDS = {
    "tensorboard": ("TensorBoardLogger", "tensorboard", "tensorboard --logdir DIR"),
    "wandb": ("WandbLogger", "wandb", "offline W&B run; wandb sync uploads it"),
    "mlflow": ("MLflowLogger", "mlruns", "MLflow file store; mlflow ui --backend-store-uri DIR"),
}


def _backend_section(name: str) -> Section:
    cls, folder, comment = _BACKENDS[name]
    return Section(
        name,
        comment,
        (
            _component(f"tunegen.runtime.loggers.{cls}"),
            Entry("log_dir", f"{RUN_DIR}/{folder}"),
        ),
    )


def _component(dotted: str) -> Entry:
    return Entry("_component_", dotted)


def _is_builtin(spec: Spec) -> bool:
    from tunegen.runtime.models import BUILTIN_MODELS

    return spec.model in BUILTIN_MODELS


def _output_dir(spec: Spec, parsed: ParsedSpec) -> Path:
    """The run dir: `checkpoint.output_dir` relative to the spec, by default `runs/<name>` in the
    working directory (next to `generated/`, also for a built-in spec inside the package)."""
    if spec.checkpoint.output_dir is None:
        return Path("runs", spec.name)
    return resolve_spec_path(parsed, spec.checkpoint.output_dir)


def _checkpoint_dir(spec: Spec, parsed: ParsedSpec, config_dir: Path) -> str | None:
    """The model's checkpoint dir as the config names it (None for a built-in model)."""
    if _is_builtin(spec):
        return None
    path = _config_path(resolve_spec_path(parsed, spec.model), config_dir)
    return f"./{path}" if path in _builtin_names() else path  # a dir named like a built-in


def _builtin_names() -> set[str]:
    from tunegen.runtime.models import BUILTIN_MODELS

    return set(BUILTIN_MODELS)


def _model_items(spec: Spec, parsed: ParsedSpec, config_dir: Path) -> tuple[Entry, ...]:
    if _is_builtin(spec):
        return (_component(f"tunegen.runtime.models.{spec.model}"),)
    return _checkpoint_model_items(_checkpoint_dir(spec, parsed, config_dir), spec.data)


def _checkpoint_model_items(path: str, data: DataSpec) -> tuple[Entry, ...]:
    return (
        _component("tunegen.runtime.load_model"),
        Entry("path_or_name", path, "Hugging Face checkpoint dir"),
        Entry("dtype", "${environment.dtype}", "weights are loaded in this dtype"),
        Entry("max_seq_len", data.max_seq_len, "bounds the RoPE tables (= dataset.max_seq_len)"),
    )


def _batch_size_entry(training: TrainingSpec) -> Entry:
    if training.tokens_per_batch is not None:
        return Entry("batch_size", 1, "one item is a whole batch of training.tokens_per_batch")
    return Entry("batch_size", "${training.batch_size}", "set in training.batch_size")


def _grpo_sections(spec: Spec, parsed: ParsedSpec, config_dir: Path) -> list[Section]:
    """The reward functions (each imported from its file) and GRPO's sampling settings."""
    grpo = spec.grpo or GrpoSpec()
    functions = []
    for entry in spec.reward or ():
        entry = RewardSpec(function=entry) if isinstance(entry, str) else entry
        path, _, function = entry.function.rpartition(":")
        name = function
        while name in {section.key for section in functions}:  # one function from two files
            name += "_"
        location = _config_path(resolve_spec_path(parsed, path), config_dir)
        functions.append(
            Section(
                name,
                "",
                (
                    Entry("path", location, "the reward file, relative to this file"),
                    Entry("function", _text(function), "f(prompts, completions, **fields)"),
                    Entry("weight", entry.weight, doc_of(RewardSpec, "weight")),
                ),
            )
        )
    keys = (
        "group_size",
        "max_new_tokens",
        "temperature",
        "top_p",
        "beta",
        "epsilon",
        "loss_type",
        "num_iterations",
        "mask_truncated",
        "log_completions_every_n_steps",
    )
    return [
        Section(
            "rewards",
            "reward functions, imported from their files; the reward is their weighted sum",
            (
                _component("tunegen.runtime.rewards.RewardFunctions"),
                Section(
                    "functions",
                    "name (as metrics show it) -> file, function, weight",
                    tuple(functions),
                ),
            ),
        ),
        Section(
            "grpo",
            "group sampling and the policy objective",
            tuple(Entry(key, getattr(grpo, key), doc_of(GrpoSpec, key)) for key in keys),
        ),
    ]


def _loss_section(spec: Spec) -> Section:
    if spec.method == "grpo":
        return Section(
            "loss",
            "the clipped token-level GRPO objective, summed (set in the grpo section)",
            (
                _component("tunegen.runtime.grpo.GRPOLoss"),
                Entry("variant", "${grpo.loss_type}", "set in grpo.loss_type"),
                Entry("epsilon", "${grpo.epsilon}", "set in grpo.epsilon"),
                Entry("kl_beta", "${grpo.beta}", "set in grpo.beta"),
                Entry("max_new_tokens", "${grpo.max_new_tokens}", "set in grpo.max_new_tokens"),
                Entry("mask_truncated", "${grpo.mask_truncated}", "set in grpo.mask_truncated"),
            ),
        )
    if chunks_loss(spec):
        return Section(
            "loss",
            "next-token cross-entropy from the hidden states, a chunk of rows at a time, summed",
            (_component("tunegen.runtime.losses.ChunkedCrossEntropyLoss"),),
        )
    if spec.method != "dpo":
        return Section(
            "loss",
            "next-token cross-entropy, summed over the tokens that carry loss",
            (_component("tunegen.runtime.losses.CrossEntropyLoss"),),
        )
    dpo = spec.dpo or DpoSpec()
    items = [
        _component("tunegen.runtime.dpo.DPOLoss"),
        Entry("beta", dpo.beta, doc_of(DpoSpec, "beta")),
        Entry("loss_type", dpo.loss_type, doc_of(DpoSpec, "loss_type")),
    ]
    if dpo.loss_type == "sigmoid":
        items.append(
            Entry("label_smoothing", dpo.label_smoothing, doc_of(DpoSpec, "label_smoothing"))
        )
    return Section("loss", "the DPO loss on policy and reference log-probabilities", tuple(items))


def _tokenizer_items(spec: Spec, parsed: ParsedSpec, config_dir: Path) -> tuple[Entry, ...]:
    if spec.tokenizer is None and _is_builtin(spec):
        return (
            _component("tunegen.runtime.tokenizers.builtin_tokenizer"),
            Entry("name", spec.model, "the tokenizer bundled with the built-in model"),
        )
    if spec.tokenizer is None:
        path, comment = _checkpoint_dir(spec, parsed, config_dir), "the checkpoint's own tokenizer"
    else:
        path = _config_path(resolve_spec_path(parsed, spec.tokenizer), config_dir)
        comment = "tokenizer.json dir, sentencepiece or tiktoken file"
    return (_component("tunegen.runtime.tokenizers.load_tokenizer"), Entry("path", path, comment))


def _export_items(spec: Spec, parsed: ParsedSpec, config_dir: Path) -> tuple[Entry, ...]:
    source = _checkpoint_dir(spec, parsed, config_dir)
    if not uses_adapters(spec):
        return (
            Entry("output_dir", f"{RUN_DIR}/hf_model", "transformers loads this dir directly"),
            Entry("source_dir", source, "config and tokenizer files are copied from here"),
        )
    items = [
        Entry("output_dir", f"{RUN_DIR}/peft_adapter", "peft.PeftModel loads this dir"),
        Entry("base_model", source or spec.model, "recorded as the adapter's base model"),
    ]
    if spec.checkpoint.export_merged:
        items += [
            Entry("merged_output_dir", f"{RUN_DIR}/hf_model", "the model with adapters merged in"),
            Entry("source_dir", source, "config and tokenizer files are copied from here"),
        ]
    return tuple(items)


def _checkpointer_items(spec: Spec, output_dir: str) -> tuple[Entry, ...]:
    checkpoint = spec.checkpoint
    items = (
        _component(_checkpointer_class(spec)),
        Entry("output_dir", output_dir, "run directory, relative to this file"),
        Entry("keep_last", checkpoint.keep_last, doc_of(CheckpointSpec, "keep_last")),
    )
    if checkpoint.keep_best is None:
        return items
    return (*items, Entry("keep_best", checkpoint.keep_best, "keep the lowest val_loss in best/"))


def _dataloader_items(data: DataSpec, training: TrainingSpec) -> tuple[Entry, ...]:
    items = (
        _batch_size_entry(training),
        Entry("shuffle", data.shuffle, doc_of(DataSpec, "shuffle")),
    )
    if data.val_split is None:
        return items
    held_out = "share of the samples held out for validation (chosen by environment.seed)"
    return (*items, Entry("val_split", data.val_split, held_out))


def _val_dataset_sections(
    data: DataSpec, parsed: ParsedSpec, config_dir: Path
) -> tuple[Section, ...]:
    """The validation data of `data.val_path`: read as the training data is (the same settings,
    by interpolation), from its own file."""
    if data.val_path is None:
        return ()
    items = [
        _component(DATASETS[data.format]),
        Entry(
            "source",
            _config_path(resolve_spec_path(parsed, data.val_path), config_dir),
            "a .jsonl or .json file, validated on during training",
        ),
    ]
    same = [entry.key for entry in _dataset_items(data, parsed, config_dir)[2:]]
    items += [Entry(key, f"${{dataset.{key}}}", f"as dataset.{key}") for key in same]
    return (Section("val_dataset", "validation data, read as the training data is", tuple(items)),)


def _dataset_items(data: DataSpec, parsed: ParsedSpec, config_dir: Path) -> tuple[Entry, ...]:
    items = [
        _component(DATASETS[data.format]),
        Entry(
            "source",
            _config_path(resolve_spec_path(parsed, data.path), config_dir),
            "a .jsonl or .json file",
        ),
    ]
    if data.format != "text":
        items.append(Entry("template", data.template, doc_of(DataSpec, "template")))
    if data.format == "prompts":
        items.append(
            Entry("max_new_tokens", "${grpo.max_new_tokens}", "set in grpo.max_new_tokens")
        )
    if data.format in ("instruct", "chat"):
        items.append(
            Entry("train_on_input", data.train_on_input, doc_of(DataSpec, "train_on_input"))
        )
    if data.format == "text":
        items.append(Entry("column", _text(data.column), doc_of(DataSpec, "column")))
    items.append(Entry("max_seq_len", data.max_seq_len, doc_of(DataSpec, "max_seq_len")))
    items.append(
        Entry(
            "max_dropped_fraction",
            data.max_dropped_fraction,
            doc_of(DataSpec, "max_dropped_fraction"),
        )
    )
    return tuple(items)


def _training_items(spec: Spec) -> tuple[Entry, ...]:
    training, checkpoint = spec.training, spec.checkpoint
    # The knobs users turn most live here, as in the spec (`training.lr=1e-4` on the command
    # line); the component sections refer to them by interpolation.
    items = [
        Entry("epochs", training.epochs, doc_of(TrainingSpec, "epochs")),
        Entry("max_steps", training.max_steps, doc_of(TrainingSpec, "max_steps")),
        _batch_items(training),
        Entry("grad_accum", training.grad_accum, doc_of(TrainingSpec, "grad_accum")),
        Entry("lr", training.lr, doc_of(TrainingSpec, "lr")),
        Entry("weight_decay", training.weight_decay, doc_of(TrainingSpec, "weight_decay")),
        Entry("warmup_steps", training.warmup_steps, doc_of(TrainingSpec, "warmup_steps")),
    ]
    if spec.method == "kd":
        items.append(Entry("kd_weight", spec.kd.weight, doc_of(KdSpec, "weight")))
    if training.clip_grad_norm is not None:
        items.append(
            Entry("clip_grad_norm", training.clip_grad_norm, "clip the gradient norm to this")
        )
    if uses_validation(spec):
        items += [
            Entry(
                "val_every_n_steps",
                training.val_every_n_steps,
                doc_of(TrainingSpec, "val_every_n_steps").partition(";")[0],
            ),
            Entry(
                "val_max_batches",
                training.val_max_batches,
                doc_of(TrainingSpec, "val_max_batches"),
            ),
        ]
    items += [
        Entry(
            "save_every_n_steps",
            checkpoint.save_every_n_steps,
            doc_of(CheckpointSpec, "save_every_n_steps"),
        ),
        Entry("resume", checkpoint.resume, doc_of(CheckpointSpec, "resume")),
    ]
    return tuple(items)


def _batch_items(training: TrainingSpec) -> Entry:
    if training.tokens_per_batch is not None:
        doc = doc_of(TrainingSpec, "tokens_per_batch")
        return Entry("tokens_per_batch", training.tokens_per_batch, doc)
    return Entry("batch_size", training.batch_size, doc_of(TrainingSpec, "batch_size"))


def _eval_items(
    eval_spec: EvalSpec, data: DataSpec, parsed: ParsedSpec, config_dir: Path
) -> tuple[Entry, ...]:
    return (
        Entry(
            "source",
            _config_path(resolve_spec_path(parsed, eval_spec.path), config_dir),
            "held-out instruct data",
        ),
        Entry("template", data.template, "the training data's prompt template"),
        Entry("max_samples", eval_spec.max_samples, doc_of(EvalSpec, "max_samples")),
        Entry("max_new_tokens", eval_spec.max_new_tokens, doc_of(EvalSpec, "max_new_tokens")),
    )


def _profiler_items(profiler: ProfilerSpec) -> tuple[Entry, ...]:
    return (
        _component("tunegen.runtime.profiling.Profiler"),
        Entry("output_dir", f"{RUN_DIR}/profile", "trace.json and key_averages.txt go here"),
        *(
            Entry(k, getattr(profiler, k), doc_of(ProfilerSpec, k))
            for k in ("wait_steps", "warmup_steps", "active_steps")
        ),
    )


def _display_path(path: Path) -> str:
    """A path as the headers show it (in run commands): relative to the working directory when
    inside it."""
    path = Path(os.path.abspath(path))
    try:
        return _text(path.relative_to(Path.cwd()).as_posix())
    except ValueError:
        return _text(path.as_posix())


def _config_path(path: Path, config_dir: Path) -> str:
    """A path as the config holds it: relative to the config file's folder `config_dir`, which is
    what `load_config` resolves it against, so the config works from any working directory.

    A path outside the working directory (a shared dataset, an installed package's data), or any
    path when the config itself is written outside it, stays absolute: a long climb of `..` would
    break as soon as the project moves.
    """
    cwd = Path.cwd()
    path, config_dir = Path(os.path.abspath(path)), Path(os.path.abspath(config_dir))
    if not (path.is_relative_to(cwd) and config_dir.is_relative_to(cwd)):
        return _text(path.as_posix())
    return _text(Path(os.path.relpath(path, config_dir)).as_posix())


def _text(value: str) -> str:
    """Spec text as a config value that OmegaConf reads back verbatim, never as interpolation.

    OmegaConf escapes `${` as `\\${`, and the backslashes just before it must be doubled.
    """
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
