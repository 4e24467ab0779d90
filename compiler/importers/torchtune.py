"""torchtune recipe configs -> tunegen spec values.

A torchtune config names its recipe's components (`model._component_:
torchtune.models.llama3_2.lora_llama3_2_1b`) and holds the training loop's knobs at the top
level. The method follows from the components (a `lora_`/`qlora_` model builder, `use_dora`,
`quantize_base`, a DPO loss, a `kd_loss`), the model family from the builder's module, the weights
from `checkpointer.checkpoint_dir`. The tables below hold every key that maps one to one
(`DIRECT`), the keys tunegen has no setting for with the reason (`NOT_IMPORTED`), and the
components it understands; functions handle the keys whose meaning depends on others.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunegen.compiler.importers import ImportError_, SpecBuilder, number, spec_name

__all__ = ["NO_SUCH_SETTING", "build"]

NO_SUCH_SETTING = "tunegen has no such setting"

#: Model families (`torchtune.models.<family>`) whose checkpoints tunegen's runtime loads.
FAMILIES = {
    "llama2": "Llama 2",
    "code_llama2": "Code Llama",
    "llama3": "Llama 3",
    "llama3_1": "Llama 3.1",
    "llama3_2": "Llama 3.2",
    "llama3_3": "Llama 3.3",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen2_5": "Qwen2.5",
    "qwen3": "Qwen3",
    "phi3": "Phi-3",
    "phi4": "Phi-4",
}
#: Chat template of each family, for chat data (the template the family's tokenizer applies).
CHAT_TEMPLATES = {
    "llama3": "llama3",
    "llama3_1": "llama3",
    "llama3_2": "llama3",
    "llama3_3": "llama3",
    "qwen2": "chatml",
    "qwen2_5": "chatml",
    "qwen3": "chatml",
    "mistral": "mistral",
}
_TUNE_DOWNLOAD = re.compile(r"^#\s*tune download (\S+) --output-dir (\S+)", re.MULTILINE)
SUPPORTED_RECIPES = (
    "full_finetune_*, lora_finetune_*, lora_dpo_*, full_dpo_*, knowledge_distillation_* "
    "(full, lora, qlora, dora, dpo, kd)"
)

#: torchtune LoRA layer names -> Hugging Face (tunegen) names.
LORA_LAYERS = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "output_proj": "o_proj",
}
MLP_LAYERS = ("gate_proj", "down_proj", "up_proj")  # torchtune's w1, w2, w3

#: Source keys copied to one spec key (numbers written as text are read as numbers).
DIRECT = {
    "epochs": "training.epochs",
    "batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "optimizer.lr": "training.lr",
    "optimizer.weight_decay": "training.weight_decay",
    "lr_scheduler.num_warmup_steps": "training.warmup_steps",
    "enable_activation_checkpointing": "training.activation_checkpointing",
    "shuffle": "data.shuffle",
    "dataset.packed": "data.packed",
    "dataset.train_on_input": "data.train_on_input",
    "log_every_n_steps": "logging.every_n_steps",
    "output_dir": "checkpoint.output_dir",
    "resume_from_checkpoint": "checkpoint.resume",
    "model.lora_rank": "lora.rank",
    "model.lora_alpha": "lora.alpha",
    "model.lora_dropout": "lora.dropout",
    "loss.beta": "dpo.beta",
    "loss.label_smoothing": "dpo.label_smoothing",
    "kd_ratio": "kd.weight",
}
#: Source keys that map to spec keys this tunegen may not have yet (`set_if_known`).
NEWER = {
    "compile": "training.compile",
    "optimizer_in_bwd": "training.optimizer_in_bwd",
}
_FROM_MODEL_DIR = "tunegen reads the tokenizer from the model dir, or from spec key tokenizer"
#: Source keys tunegen has no setting for, and why.
NOT_IMPORTED = {
    "tokenizer.path": _FROM_MODEL_DIR,
    "tokenizer.merges_file": _FROM_MODEL_DIR,
    "tokenizer.vocab_path": _FROM_MODEL_DIR,
    "tokenizer.merges_path": _FROM_MODEL_DIR,
    "tokenizer.special_tokens_path": _FROM_MODEL_DIR,
    "tokenizer.prompt_template": "tunegen formats prompts with data.template",
    "checkpointer.checkpoint_files": "tunegen reads every weight file of the model dir",
    "checkpointer.recipe_checkpoint": "tunegen resumes from its own step dirs: checkpoint.resume",
    "checkpointer.adapter_checkpoint": "tunegen resumes from its own step dirs: checkpoint.resume",
    "checkpointer.model_type": "tunegen reads the architecture from the model's config.json",
    "checkpointer.safe_serialization": "tunegen always writes safetensors",
    "teacher_checkpointer": "kd.teacher is the teacher's checkpoint dir; the rest is read from it",
    "teacher_model": "the teacher's architecture is read from its config.json",
    "save_adapter_weights_only": "tunegen saves adapters in step dirs and exports peft_adapter/",
    "device": "tunegen picks the device itself: training.device is auto",
    "log_peak_memory_stats": "tunegen logs peak memory on every log line and in the summary",
    "enable_activation_offloading": "tunegen has no activation offloading",
    "low_cpu_ram": "tunegen loads checkpoints one shard at a time",
    "metric_logger.log_dir": "tunegen writes metrics into the run dir",
    "metric_logger.project": "tunegen's W&B runs are offline, named after the spec",
    "metric_logger.filename": "tunegen writes metrics.jsonl into the run dir",
    "optimizer.fused": "tunegen builds torch.optim.AdamW with its own defaults",
    "optimizer.betas": "tunegen builds torch.optim.AdamW with its default betas",
    "optimizer.eps": "tunegen builds torch.optim.AdamW with its default eps",
    "model.apply_lora_to_output": "tunegen puts adapters on attention and MLP layers only",
    "dataset.split": "tunegen trains on the whole file",
    "kd_loss": "tunegen's kd loss is the forward KL of the teacher's and student's logits",
    "loss": "tunegen computes the same token-level cross-entropy",
}
#: Profiler keys tunegen has no setting for (when the profiler is on; off, the section is one line).
PROFILER_NOT_IMPORTED = {
    "profiler.output_dir": "tunegen writes traces to <output_dir>/profile",
    "profiler.cpu": "tunegen records CPU and, on a GPU, CUDA activity",
    "profiler.cuda": "tunegen records CPU and, on a GPU, CUDA activity",
    "profiler.profile_memory": "tunegen's profiler settings are its step counts only",
    "profiler.with_stack": "tunegen's profiler settings are its step counts only",
    "profiler.record_shapes": "tunegen's profiler settings are its step counts only",
    "profiler.with_flops": "tunegen's profiler settings are its step counts only",
    "profiler.num_cycles": "tunegen profiles one cycle",
}
#: Dataset builders: (data.format, data.template, default source).
DATASETS = {
    "alpaca_dataset": ("instruct", "alpaca", "tatsu-lab/alpaca"),
    "alpaca_cleaned_dataset": ("instruct", "alpaca", "yahma/alpaca-cleaned"),
    "instruct_dataset": ("instruct", "plain", None),
    "chat_dataset": ("chat", None, None),
    "slimorca_dataset": ("chat", None, "Open-Orca/SlimOrca-Dedup"),
    "text_completion_dataset": ("text", None, None),
    "preference_dataset": ("preference", None, None),
    "stack_exchange_paired_dataset": ("preference", "alpaca", "lvwerra/stack-exchange-paired"),
    "hh_rlhf_helpful_dataset": ("preference", None, "RLHFlow/HH-RLHF-Helpful-standard"),
}
#: Builders that name their records' fields differently from tunegen (a note says so).
DATASET_FIELDS = {
    "instruct_dataset": "records need instruction and output (torchtune's input and output)",
    "stack_exchange_paired_dataset": (
        "records need prompt, chosen, rejected (the hub set has question, response_j, response_k)"
    ),
}
SCHEDULERS = {
    "get_cosine_schedule_with_warmup": "cosine",
    "get_linear_schedule_with_warmup": "linear",
    "get_constant_schedule_with_warmup": "constant",
    "get_constant_schedule": "constant",
}
METRIC_LOGGERS = {
    "DiskLogger": [],
    "StdoutLogger": [],
    "TensorBoardLogger": ["tensorboard"],
    "WandBLogger": ["wandb"],
    "MLFlowLogger": ["mlflow"],
}
DTYPES = {"bf16": "bf16", "fp32": "fp32"}
#: Top-level sections of recipes tunegen has no counterpart of (the recipe they belong to).
UNSUPPORTED_SECTIONS = {
    "quantizer": "quantization-aware training (QAT)",
    "ref_policy_model": "PPO",
    "reward_and_value_model": "PPO",
    "value_checkpointer": "PPO",
    "reward_functions": "GRPO",
    "inference": "GRPO",
}


def build(spec: SpecBuilder, path: Path) -> None:
    """Fill `spec` from the torchtune config it holds (`path` names it in errors)."""
    family = _model_family(spec, path)
    spec.set("name", spec_name(path, prefix=family), "")
    _method(spec, path)
    spec.set("model", _model_dir(spec, path), "checkpointer.checkpoint_dir")
    spec.use("tokenizer._component_")
    for source, key in DIRECT.items():
        if spec.has(source):
            _direct(spec, source, key)
    for source, key in NEWER.items():
        if spec.has(source):
            spec.set_if_known(key, spec.get(source), source)
    _lora_targets(spec)
    _dataset(spec, family, path)
    _training_loop(spec)
    _logging(spec)
    _profiler(spec)
    _checkpoint(spec)
    for source, reason in NOT_IMPORTED.items():
        spec.skip(source, reason)


def _direct(spec: SpecBuilder, source: str, key: str) -> None:
    value = number(spec.get(source))
    if value is None and not _nullable(key):
        spec.skip(source, f"null: tunegen's default {key} applies")
        return
    if key.startswith(("lora.", "dpo.", "kd.")) and key.split(".")[0] not in spec.values:
        spec.skip(source, f"the spec's method ({spec.values['method']}) has no {key}")
        return
    spec.set(key, value, source)


def _nullable(spec_key: str) -> bool:
    from tunegen.compiler.schema import field_at

    _, info = field_at(tuple(spec_key.split(".")))
    return info is not None and not info.is_required() and info.default is None


def _component(spec: SpecBuilder, section: str) -> tuple[str, str]:
    """(module, name) of `section._component_`: `torchtune.models.qwen2`, `qwen2_0_5b`."""
    target = str(spec.get(f"{section}._component_") or "")
    module, _, name = target.rpartition(".")
    return module, name


def _model_family(spec: SpecBuilder, path: Path) -> str:
    """The family of `model._component_`; a vision model or a family tunegen lacks is an error."""
    module, name = _component(spec, "model")
    if not spec.has("model._component_"):
        raise ImportError_(
            f"{path}: model._component_: missing; a torchtune config names its model builder there"
        )
    if not module.startswith("torchtune.models."):
        raise ImportError_(
            f"{path}: model._component_ {spec.get('model._component_')!r} is not a torchtune "
            "model builder; tunegen import reads torchtune.models.<family>.<builder>"
        )
    family = module.removeprefix("torchtune.models.").split(".")[0]
    supported = ", ".join(FAMILIES.values())
    if "vision" in family or "vision" in name or family in ("llama4", "qwen2_vl", "qwen2_5_vision"):
        raise ImportError_(
            f"{path}: model._component_ {module}.{name} is a vision model; tunegen trains text "
            f"models ({supported})"
        )
    if family not in FAMILIES:
        raise ImportError_(
            f"{path}: model family {family} (model._component_ {module}.{name}) is not "
            f"supported; tunegen trains {supported}"
        )
    for section, what in UNSUPPORTED_SECTIONS.items():
        if section in spec.raw:
            raise ImportError_(
                f"{path}: {section}: this is a {what} recipe config, which tunegen does not "
                f"have; tunegen imports {SUPPORTED_RECIPES}"
            )
    return family


def _method(spec: SpecBuilder, path: Path) -> None:
    """The method from the components: the model builder, the loss and a `kd_loss`."""
    _, builder = _component(spec, "model")
    adapters = builder.startswith(("lora_", "qlora_"))
    _, loss = _component(spec, "loss")
    sources = ["model._component_"]
    if adapters:
        quantized = builder.startswith("qlora_") or spec.get("model.quantize_base") is True
        dora = spec.get("model.use_dora") is True
        method = "qlora" if quantized else "dora" if dora else "lora"
        if quantized and dora:
            spec.set("lora.use_dora", True, "model.use_dora")
        sources += [s for s in ("model.quantize_base", "model.use_dora") if spec.has(s)]
        spec.use("model.quantize_base", "model.use_dora")
    else:
        method = "full"
    if loss.endswith("DPOLoss"):
        spec.set("dpo.use_lora", adapters, "model._component_")
        method = "dpo"
        sources.append("loss._component_")
        spec.use("loss._component_")
    elif loss and "rlhf" in _component(spec, "loss")[0]:
        raise ImportError_(
            f"{path}: loss._component_ {loss} is not supported (tunegen's preference method is "
            f"DPO); tunegen imports {SUPPORTED_RECIPES}"
        )
    if spec.has("kd_loss") or spec.has("teacher_model"):
        method = "kd"
        teacher = spec.get("teacher_checkpointer.checkpoint_dir") or ""
        spec.set("kd.teacher", teacher, "teacher_checkpointer.checkpoint_dir")
        spec.set("kd.use_lora", adapters, "model._component_")
        sources.append("kd_loss._component_")
    if method == "dpo" and adapters:
        spec.unset("dpo.use_lora")  # the default
    if adapters:
        spec.values.setdefault("lora", {})
    spec.set("method", method, *sources)


def _model_dir(spec: SpecBuilder, path: Path) -> str:
    """`checkpointer.checkpoint_dir`: the model tunegen loads (its Hugging Face checkpoint)."""
    folder = spec.get("checkpointer.checkpoint_dir")
    if not isinstance(folder, str) or not folder:
        raise ImportError_(
            f"{path}: checkpointer.checkpoint_dir is missing; tunegen needs the model's "
            "checkpoint dir"
        )
    _, checkpointer = _component(spec, "checkpointer")
    if checkpointer == "FullModelHFCheckpointer":
        spec.use("checkpointer._component_")
    else:
        spec.skip(
            "checkpointer._component_",
            f"{checkpointer}: tunegen reads Hugging Face checkpoint dirs; point model: at the "
            "Hugging Face copy of this model",
        )
    _download_note(spec, path)
    return folder


def _download_note(spec: SpecBuilder, path: Path) -> None:
    """torchtune's configs say in a comment how their model was fetched (`tune download ID
    --output-dir DIR`): the same with Hugging Face's CLI makes the dir tunegen reads."""
    found = _TUNE_DOWNLOAD.search(path.read_text(encoding="utf-8"))
    if found is not None:
        hub_id, folder = found.groups()
        spec.note(
            "checkpointer.checkpoint_dir",
            f"the source's comment downloads {hub_id}; hf download {hub_id} --local-dir {folder} "
            "makes the Hugging Face checkpoint dir tunegen reads",
        )


def _lora_targets(spec: SpecBuilder) -> None:
    """`lora_attn_modules` (+ `apply_lora_to_mlp`) in Hugging Face layer names."""
    if "lora" not in spec.values or not spec.has("model.lora_attn_modules"):
        return
    targets = []
    for name in spec.get("model.lora_attn_modules") or []:
        if name in LORA_LAYERS:
            targets.append(LORA_LAYERS[name])
        else:
            spec.skip("model.lora_attn_modules", f"unknown torchtune layer {name!r}")
    sources = ["model.lora_attn_modules"]
    if spec.get("model.apply_lora_to_mlp") is True:
        targets += MLP_LAYERS
    if spec.has("model.apply_lora_to_mlp"):
        sources.append("model.apply_lora_to_mlp")
    spec.set("lora.targets", targets, *sources)
    if spec.get("model.apply_lora_to_output") is not True:
        spec.use("model.apply_lora_to_output")


def _dataset(spec: SpecBuilder, family: str, path: Path) -> None:
    """The dataset builder: format, template, the data file (a local file or a hub id)."""
    if isinstance(spec.get("dataset"), list):
        raise ImportError_(
            f"{path}: dataset: a list of {len(spec.get('dataset'))} datasets; tunegen trains on "
            "one data file: keep one entry (or concatenate the files into one)"
        )
    _, builder = _component(spec, "dataset")
    if builder not in DATASETS:
        raise ImportError_(
            f"{path}: dataset._component_ {spec.get('dataset._component_')} is not supported; "
            f"tunegen imports torchtune.datasets.{', '.join(DATASETS)}"
        )
    data_format, template, default_source = DATASETS[builder]
    spec.set("data.format", data_format, "dataset._component_")
    if data_format == "chat" or (data_format == "preference" and template is None):
        template = CHAT_TEMPLATES.get(family, "tokenizer")
    if template is not None:
        spec.set("data.template", template, "dataset._component_")
    sources = [s for s in ("dataset.source", "dataset.data_files") if spec.has(s)]
    default = f"(the source of {builder})"
    spec.set("data.path", _data_path(spec, default_source), *(sources or [default]))
    _dataset_columns(spec, builder)
    if spec.get("tokenizer.max_seq_len") is not None:
        spec.set(
            "data.max_seq_len", number(spec.get("tokenizer.max_seq_len")), "tokenizer.max_seq_len"
        )
    else:
        spec.skip(
            "tokenizer.max_seq_len", "null means no limit; tunegen truncates at data.max_seq_len"
        )
    if data_format == "preference":
        spec.unset("data.packed")
        if spec.get("dataset.packed"):
            spec.skip("dataset.packed", "method: dpo does not pack")
        else:
            spec.use("dataset.packed")


def _data_path(spec: SpecBuilder, default_source: str | None) -> str:
    """A local `data_files` for a loader `source` (json, csv, ...), else the hub id `source`."""
    source = spec.get("dataset.source") or default_source or ""
    files = spec.get("dataset.data_files")
    if isinstance(files, list) and files:
        if len(files) > 1:
            spec.skip("dataset.data_files", "tunegen trains on one data file; the first is used")
        files = files[0]
    if source in ("json", "csv", "parquet", "text", "arrow") and isinstance(files, str):
        return files
    return str(source)


def _dataset_columns(spec: SpecBuilder, builder: str) -> None:
    """Column maps tunegen cannot apply (its record fields are fixed) are reported."""
    if builder == "text_completion_dataset":
        spec.set("data.column", spec.get("dataset.column", "text"), "dataset.column")
    if builder == "chat_dataset":
        spec.use("dataset.conversation_style")
        column = spec.get("dataset.conversation_column")
        style = spec.get("dataset.conversation_style")
        wanted = {"sharegpt": "conversations", "openai": "messages"}.get(str(style))
        if column in (None, wanted):
            spec.use("dataset.conversation_column")
        else:
            spec.skip(
                "dataset.conversation_column", f"tunegen reads the field {wanted or 'messages'}"
            )
    if spec.has("dataset.column_map"):
        spec.skip(
            "dataset.column_map", "tunegen reads fixed record fields; rename them in the file"
        )
    if builder in DATASET_FIELDS:
        spec.note("dataset._component_", DATASET_FIELDS[builder])


def _training_loop(spec: SpecBuilder) -> None:
    """The keys whose meaning depends on another or on being absent."""
    if spec.has("lr_scheduler"):
        _, name = _component(spec, "lr_scheduler")
        if name in SCHEDULERS:
            spec.set("training.scheduler", SCHEDULERS[name], "lr_scheduler._component_")
        else:
            spec.skip(
                "lr_scheduler._component_", f"tunegen has no {name} (cosine, linear, constant)"
            )
    else:
        spec.set("training.scheduler", "constant", "(no lr_scheduler: a constant lr)")
    if spec.get("clip_grad_norm") is None:
        spec.set(
            "training.clip_grad_norm",
            None,
            "clip_grad_norm" if spec.has("clip_grad_norm") else "(no clip_grad_norm)",
        )
    else:
        spec.set("training.clip_grad_norm", number(spec.get("clip_grad_norm")), "clip_grad_norm")
    _max_steps(spec)
    dtype = spec.get("dtype")
    if dtype in DTYPES:
        spec.set("training.dtype", DTYPES[dtype], "dtype")
    elif dtype is not None:
        spec.skip("dtype", f"tunegen trains in fp32 or bf16, not {dtype}")
    seed = spec.get("seed")
    if isinstance(seed, int):
        spec.set("training.seed", seed, "seed")
    else:
        spec.skip("seed", "null means a random seed; tunegen runs are seeded: training.seed")
    _, optimizer = _component(spec, "optimizer")
    if optimizer == "AdamW":
        spec.use("optimizer._component_")
    else:
        spec.skip(
            "optimizer._component_", f"tunegen trains with torch.optim.AdamW, not {optimizer}"
        )


def _max_steps(spec: SpecBuilder) -> None:
    """`max_steps_per_epoch` caps every epoch; tunegen's `max_steps` caps the run."""
    per_epoch = spec.get("max_steps_per_epoch")
    if per_epoch is None:
        spec.use("max_steps_per_epoch")
        return
    epochs = number(spec.get("epochs", 1))
    spec.set("training.max_steps", int(per_epoch) * int(epochs), "max_steps_per_epoch", "epochs")
    if int(epochs) > 1:
        spec.note("max_steps_per_epoch", "imported as training.max_steps = epochs x this")


def _logging(spec: SpecBuilder) -> None:
    _, logger = _component(spec, "metric_logger")
    if logger in METRIC_LOGGERS:
        backends = ["jsonl", *METRIC_LOGGERS[logger]]
        spec.set("logging.backends", backends, "metric_logger._component_")
    elif logger:
        spec.skip("metric_logger", f"tunegen has no {logger} (jsonl, tensorboard, wandb, mlflow)")


def _profiler(spec: SpecBuilder) -> None:
    if spec.get("profiler.enabled") is not True:
        spec.skip("profiler", "profiler.enabled is false")
        return
    spec.use("profiler._component_", "profiler.enabled")
    for key in ("wait_steps", "warmup_steps", "active_steps"):
        if spec.has(f"profiler.{key}"):
            spec.set(f"profiler.{key}", number(spec.get(f"profiler.{key}")), f"profiler.{key}")
    for source, reason in PROFILER_NOT_IMPORTED.items():
        spec.skip(source, reason)


def _checkpoint(spec: SpecBuilder) -> None:
    """The checkpointer writes to the run dir (`output_dir`), as tunegen does."""
    out = spec.get("checkpointer.output_dir")
    if out in ("${output_dir}", spec.get("output_dir")):
        spec.use("checkpointer.output_dir")
    elif out is not None and not spec.has("output_dir"):
        spec.set("checkpoint.output_dir", out, "checkpointer.output_dir")
