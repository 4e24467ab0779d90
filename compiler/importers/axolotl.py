"""axolotl configs -> tunegen spec values.

An axolotl config is flat: `base_model`, `adapter: lora|qlora`, `rl: dpo`, `lora_r`, `datasets:`
entries, and Hugging Face Trainer names for the loop (`learning_rate`, `micro_batch_size`, ...).
A key set to null is axolotl's "unset" (its default applies) and carries nothing to import. The
tables below hold the keys that map one to one (`DIRECT`), those tunegen has no setting for, with
the reason (`NOT_IMPORTED`), and the value tables (dataset types, chat templates, schedulers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunegen.compiler.importers import ImportError_, SpecBuilder, number

__all__ = ["NO_SUCH_SETTING", "build"]

NO_SUCH_SETTING = "tunegen has no such setting"
SUPPORTED = (
    "tunegen trains Llama 2/3/3.1/3.2/3.3, Mistral, Qwen2/2.5/3 and Phi-3/Phi-4 text models "
    "with full, lora, qlora, dora or rl: dpo"
)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Source keys copied to one spec key (numbers written as text are read as numbers).
DIRECT = {
    "num_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "micro_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "learning_rate": "training.lr",
    "weight_decay": "training.weight_decay",
    "warmup_steps": "training.warmup_steps",
    "max_grad_norm": "training.clip_grad_norm",
    "seed": "training.seed",
    "sequence_len": "data.max_seq_len",
    "sample_packing": "data.packed",
    "train_on_inputs": "data.train_on_input",
    "shuffle_merged_datasets": "data.shuffle",
    "output_dir": "checkpoint.output_dir",
    "save_steps": "checkpoint.save_every_n_steps",
    "save_total_limit": "checkpoint.keep_last",
    "logging_steps": "logging.every_n_steps",
    "lora_r": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "dpo_beta": "dpo.beta",
    "rl_beta": "dpo.beta",
    "dpo_label_smoothing": "dpo.label_smoothing",
}
#: Source keys that map to spec keys this tunegen may not have yet (`set_if_known`).
NEWER = {
    "torch_compile": "training.compile",
    "eval_steps": "training.val_every_n_steps",
}
_ADAMW = "tunegen trains with torch.optim.AdamW"
#: Source keys tunegen has no setting for, and why.
NOT_IMPORTED = {
    "base_model_config": "tunegen reads the config.json of model",
    "tokenizer_type": "tunegen reads the tokenizer of the model dir",
    "tokenizer_config": "tunegen reads the tokenizer of the model dir, or from spec key tokenizer",
    "trust_remote_code": "tunegen runs no code from the model dir",
    "special_tokens": "tunegen uses the tokenizer's own special tokens",
    "tokens": "tunegen does not add tokens to the vocabulary",
    "resize_token_embeddings_to_32x": "tunegen keeps the vocabulary's size",
    "load_in_8bit": "tunegen has no 8-bit base weights; qlora stores them in 4-bit NF4",
    "bnb_config_kwargs": "qlora's NF4 settings are fixed",
    "lora_model_dir": "tunegen starts adapters fresh (checkpoint.resume continues a run)",
    "lora_fan_in_fan_out": "tunegen's adapters follow the layer's weight layout",
    "lora_modules_to_save": "tunegen trains only the adapters",
    "lora_mlp_kernel": "tunegen has no fused LoRA kernels",
    "lora_qkv_kernel": "tunegen has no fused LoRA kernels",
    "lora_o_kernel": "tunegen has no fused LoRA kernels",
    "dataset_prepared_path": "tunegen tokenizes at start-up and keeps no cache",
    "eval_sample_packing": "tunegen has no evaluation packing",
    "pad_to_sequence_len": "tunegen pads each batch to its longest sample",
    "optimizer": _ADAMW,
    "adam_beta1": f"{_ADAMW} with its default betas",
    "adam_beta2": f"{_ADAMW} with its default betas",
    "adam_epsilon": f"{_ADAMW} with its default eps",
    "warmup_ratio": "tunegen's warmup is in steps: set training.warmup_steps to ratio x steps",
    "cosine_min_lr_ratio": "tunegen's cosine schedule decays to 0",
    "tf32": "tunegen leaves TF32 matmuls at PyTorch's setting",
    "fp16": "tunegen trains in fp32 or bf16",
    "gradient_checkpointing_kwargs": "tunegen's activation checkpointing is non-reentrant",
    "attn_implementation": "tunegen uses PyTorch scaled_dot_product_attention",
    "flash_attention": "tunegen uses PyTorch scaled_dot_product_attention",
    "sdp_attention": "tunegen uses PyTorch scaled_dot_product_attention",
    "xformers_attention": "tunegen uses PyTorch scaled_dot_product_attention",
    "fused_attn_kernel": "tunegen uses PyTorch scaled_dot_product_attention",
    "loss_watchdog_threshold": "tunegen stops at a NaN/inf loss: training.on_nonfinite_loss",
    "loss_watchdog_patience": "tunegen stops at a NaN/inf loss: training.on_nonfinite_loss",
    "evals_per_epoch": "tunegen counts validation in steps, not per epoch",
    "saves_per_epoch": "tunegen saves at the end and every checkpoint.save_every_n_steps",
    "eval_batch_size": "tunegen has no separate evaluation batch size",
    "eval_table_size": "tunegen has no prediction tables",
    "eval_max_new_tokens": "tunegen's exact-match eval is the spec section eval",
    "eval_causal_lm_metrics": "tunegen has no generation metrics during training",
    "do_causal_lm_eval": "tunegen has no generation metrics during training",
    "early_stopping_patience": "tunegen has no early stopping",
    "hub_model_id": "tunegen does not upload; it exports hf_model/ or peft_adapter/",
    "hub_strategy": "tunegen does not upload",
    "wandb_entity": "tunegen's W&B runs are offline; wandb sync uploads them later",
    "wandb_watch": "tunegen's W&B runs are offline",
    "wandb_name": "tunegen's W&B runs are named after the spec",
    "wandb_log_model": "tunegen's W&B runs are offline",
    "wandb_run_id": "tunegen's W&B runs are named after the spec",
    "plugins": "tunegen has no plugins",
    "strict": "tunegen's own checks are always strict",
    "debug": "tunegen --debug shows tracebacks",
    "deepspeed": "tunegen's recipe is single-device",
    "fsdp": "tunegen's recipe is single-device",
    "fsdp_config": "tunegen's recipe is single-device",
    "fsdp_version": "tunegen's recipe is single-device",
    "ddp_find_unused_parameters": "tunegen's recipe is single-device",
    "device_map": "tunegen places the model on training.device",
    "local_rank": "tunegen's recipe is single-device",
    "gradient_checkpointing_offload": "tunegen has no activation offloading",
    "val_set_size": "this tunegen has no data.val_split",
}
#: axolotl dataset `type` -> (data.format, data.template for instruct data).
DATASET_TYPES = {
    "alpaca": ("instruct", "alpaca"),
    "alpaca_chat": ("instruct", "alpaca"),
    "alpaca:chatml": ("instruct", "alpaca"),
    "alpaca:phi": ("instruct", "alpaca"),
    "completion": ("text", None),
    "sharegpt": ("chat", None),
    "chat_template": ("chat", None),
    "chat_template.default": ("chat", None),
    "chat_template.argilla": ("chat", None),
}
#: axolotl `chat_template` -> tunegen's data.template.
CHAT_TEMPLATES = {
    "llama3": "llama3",
    "llama3_2_vision": "llama3",
    "chatml": "chatml",
    "qwen_25": "chatml",
    "qwen3": "chatml",
    "mistral": "mistral",
    "mistral_v1": "mistral",
    "mistral_v2v3": "mistral",
    "mistral_v3_tekken": "mistral",
    "alpaca": "alpaca",
    "tokenizer_default": "tokenizer",
    "phi_3": "tokenizer",
    "phi_35": "tokenizer",
}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant"}
#: `rl:` values -> (method, dpo.loss_type).
RL_METHODS = {"dpo": ("dpo", None), "ipo": ("dpo", "ipo")}
#: Words in a model's name or type that mark what tunegen cannot train.
VISION = re.compile(
    r"vision|[-_]vl\b|-vl-|llava|pixtral|idefics|mllama|conditionalgeneration|gemma3", re.I
)
OTHER_FAMILIES = re.compile(
    r"gemma|mixtral|falcon|mamba|jamba|pythia|gpt2|gpt-neox|phi-?[12]\b|deepseek|olmo|"
    r"qwen3-next|qwen3\.5|moe|-a3b|-a10b|mpt|bloom|opt-",
    re.I,
)
SUPPORTED_TYPES = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "AutoModelForCausalLM",
}


def build(spec: SpecBuilder, path: Path) -> None:
    """Fill `spec` from the axolotl config it holds (`path` names it in errors)."""
    _check_model(spec, path)
    spec.use(*(key for key, value in spec.raw.items() if value is None))  # unset: nothing to import
    spec.set("model", str(spec.get("base_model")), "base_model")
    _method(spec, path)
    for source, key in DIRECT.items():
        if spec.get(source) is not None:
            _direct(spec, source, key)
    for source, key in NEWER.items():
        if spec.get(source) is not None:
            spec.set_if_known(key, spec.get(source), source)
    _lora_targets(spec)
    _datasets(spec, path)
    _training_loop(spec)
    _logging(spec)
    for source, reason in NOT_IMPORTED.items():
        spec.skip(source, reason)


def _direct(spec: SpecBuilder, source: str, key: str) -> None:
    section = key.split(".")[0]
    if section in ("lora", "dpo") and section not in spec.values:
        spec.skip(source, f"the spec's method ({spec.values['method']}) has no {key}")
        return
    spec.set(key, number(spec.get(source)), source)


def _check_model(spec: SpecBuilder, path: Path) -> None:
    """A vision model, or a family tunegen lacks, is an error naming it."""
    if not spec.get("base_model"):
        raise ImportError_(f"{path}: base_model: missing; an axolotl config names its model there")
    base = str(spec.get("base_model"))
    kind = str(spec.get("model_type") or "")
    for what in (base, kind):
        if VISION.search(what) or spec.has("processor_type"):
            raise ImportError_(f"{path}: base_model {base} is a vision model; {SUPPORTED}")
    if kind and kind not in SUPPORTED_TYPES:
        raise ImportError_(f"{path}: model_type {kind} is not supported; {SUPPORTED}")
    if OTHER_FAMILIES.search(base):
        raise ImportError_(f"{path}: base_model {base} is not a supported model; {SUPPORTED}")
    spec.use("model_type")
    for key in ("reward_model", "process_reward_model"):
        if spec.get(key):
            raise ImportError_(
                f"{path}: {key}: reward-model training is not supported; {SUPPORTED}"
            )


def _method(spec: SpecBuilder, path: Path) -> None:
    """`adapter` (+ `peft_use_dora`, `load_in_4bit`) and `rl` decide the method."""
    adapter = spec.get("adapter")
    if adapter not in (None, "lora", "qlora"):
        raise ImportError_(f"{path}: adapter: {adapter} is not supported; {SUPPORTED}")
    rl = spec.get("rl")
    if rl is not None and rl not in RL_METHODS:
        raise ImportError_(f"{path}: rl: {rl} is not supported; {SUPPORTED}")
    dora = spec.get("peft_use_dora") is True
    sources = [s for s in ("adapter", "peft_use_dora", "load_in_4bit") if spec.has(s)]
    spec.use("adapter", "peft_use_dora")
    if rl is not None:
        method, loss_type = RL_METHODS[rl]
        spec.use("rl")
        spec.values.setdefault("dpo", {})
        if loss_type:
            spec.set("dpo.loss_type", loss_type, "rl")
        if adapter is None:
            spec.set("dpo.use_lora", False, "rl", "(no adapter)")
        if adapter == "qlora":
            spec.skip("adapter", "rl: dpo trains LoRA on an unquantized base")
        if spec.get("load_in_4bit"):
            spec.skip("load_in_4bit", "rl: dpo trains LoRA on an unquantized base")
        sources.insert(0, "rl")
    elif adapter == "qlora" or (adapter == "lora" and spec.get("load_in_4bit")):
        method = "qlora"
        spec.use("load_in_4bit")
    elif adapter == "lora":
        method = "dora" if dora else "lora"
    else:
        method = "full"
    if method == "qlora" and dora:
        spec.set("lora.use_dora", True, "peft_use_dora")
    if spec.get("load_in_4bit") is False:
        spec.use("load_in_4bit")
    if adapter is not None:
        spec.values.setdefault("lora", {})
    spec.set("method", method, *(sources or ["(no adapter)"]))


def _lora_targets(spec: SpecBuilder) -> None:
    """`lora_target_linear: true` is every linear layer; else `lora_target_modules`."""
    if "lora" not in spec.values:
        return
    if spec.get("lora_target_linear") is True:
        spec.set("lora.targets", list(ALL_LINEAR), "lora_target_linear")
        if spec.has("lora_target_modules"):
            spec.use("lora_target_modules")  # lora_target_linear covers every one of them
        return
    spec.use("lora_target_linear")
    modules = spec.get("lora_target_modules")
    if isinstance(modules, str):
        modules = [modules]
    if isinstance(modules, list):
        known = [m for m in modules if m in ALL_LINEAR]
        if len(known) < len(modules):
            others = ", ".join(str(m) for m in modules if m not in ALL_LINEAR)
            spec.note(
                "lora_target_modules", f"{others} left out: tunegen adapts {', '.join(ALL_LINEAR)}"
            )
        spec.set("lora.targets", known, "lora_target_modules")


def _datasets(spec: SpecBuilder, path: Path) -> None:
    """The first `datasets` entry is the data; more are reported (tunegen reads one file)."""
    entries = spec.get("datasets")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise ImportError_(f"{path}: datasets: expected a list of datasets (path, type)")
    for i in range(1, len(entries)):
        spec.skip(f"datasets[{i}]", "tunegen trains on one data file; concatenate them into one")
    entry = entries[0]
    at = "datasets[0]"
    kind = str(entry.get("type") or "")
    method = spec.values["method"]
    if method == "dpo":
        data_format, template = "preference", None
    elif kind in DATASET_TYPES:
        data_format, template = DATASET_TYPES[kind]
    else:
        raise ImportError_(
            f"{path}: {at}.type: {kind or '(none)'} is not supported; tunegen reads "
            f"{', '.join(DATASET_TYPES)} datasets (and rl: dpo preference data)"
        )
    spec.use(f"{at}.type")
    spec.set("data.format", data_format, f"{at}.type")
    _data_template(spec, data_format, template, kind)
    files = entry.get("data_files")
    local = entry.get("ds_type") in ("json", "jsonl") or str(entry.get("path", "")).endswith(
        (".json", ".jsonl")
    )
    data_path = files[0] if isinstance(files, list) and files else files or entry.get("path")
    spec.set(
        "data.path", str(data_path or ""), f"{at}.path", *([f"{at}.data_files"] if files else [])
    )
    spec.use(f"{at}.ds_type" if local else "")
    _dataset_fields(spec, entry, at, data_format)


def _data_template(spec: SpecBuilder, data_format: str, template: str | None, kind: str) -> None:
    if data_format == "text":
        spec.skip("chat_template", "text data has no template")
        return
    if template is None:
        name = spec.get("chat_template")
        template = CHAT_TEMPLATES.get(str(name), "tokenizer") if name else "tokenizer"
        if name and str(name) not in CHAT_TEMPLATES:
            spec.note("chat_template", f"{name}: imported as data.template: tokenizer")
        spec.set("data.template", template, "chat_template" if name else "(no chat_template)")
    else:
        spec.set("data.template", template, "datasets[0].type")
        if spec.has("chat_template"):
            spec.skip("chat_template", f"{kind} data uses the {template} prompt template")


def _dataset_fields(spec: SpecBuilder, entry: dict[str, Any], at: str, data_format: str) -> None:
    """Field mappings: tunegen reads fixed fields (messages/conversations, role/content or
    from/value, prompt/chosen/rejected), so standard ones are accounted for, others reported."""
    fields = {
        "chat": {"field_messages": ("messages", "conversations")},
        "preference": {
            "field_messages": ("prompt",),
            "field_chosen": ("chosen",),
            "field_rejected": ("rejected",),
        },
    }.get(data_format, {})
    if data_format == "text":
        spec.set("data.column", str(entry.get("field", "text")), f"{at}.field")
    for key, fine in fields.items():
        if key not in entry:
            continue
        spec.use(f"{at}.{key}")
        if entry[key] not in fine:
            spec.note(
                f"{at}.{key}", f"tunegen reads the field {' or '.join(fine)}: rename {entry[key]}"
            )
    mappings = entry.get("message_property_mappings") or {}
    if all(f"{v}" in ("role", "content", "from", "value") for v in mappings.values()):
        spec.use(f"{at}.message_property_mappings")
    roles = entry.get("roles") or {}
    if all(isinstance(v, list) and k in v for k, v in roles.items()):
        spec.use(f"{at}.roles")
    if entry.get("split") in (None, "train"):
        spec.use(f"{at}.split")
    spec.skip(f"{at}.split", "tunegen trains on the whole file: export the split you want")
    for key in entry:
        spec.skip(f"{at}.{key}", f"tunegen's {data_format} data has no {key} setting")


def _training_loop(spec: SpecBuilder) -> None:
    """The keys whose value needs translating."""
    scheduler = spec.get("lr_scheduler")
    if scheduler in SCHEDULERS:
        spec.set("training.scheduler", SCHEDULERS[scheduler], "lr_scheduler")
    elif scheduler is not None:
        spec.skip("lr_scheduler", f"tunegen has no {scheduler} schedule (cosine, linear, constant)")
    else:
        spec.set("training.scheduler", "linear", "(no lr_scheduler: the Trainer's linear)")
    bf16 = spec.get("bf16")
    if bf16 in (True, "auto", "true"):
        spec.set("training.dtype", "bf16", "bf16")
    elif bf16 is False:
        spec.set("training.dtype", "fp32", "bf16")
    checkpointing = spec.get("gradient_checkpointing")
    if checkpointing is not None:
        spec.set("training.activation_checkpointing", bool(checkpointing), "gradient_checkpointing")
        if checkpointing not in (True, False):
            spec.note(
                "gradient_checkpointing", f"{checkpointing}: imported as true (no offloading)"
            )
    resume = spec.get("resume_from_checkpoint")
    if isinstance(resume, str) and resume:
        spec.set("checkpoint.resume", resume, "resume_from_checkpoint")
    if spec.get("optimizer") in ("adamw_torch", "adamw_torch_fused", "adamw_hf", None):
        spec.use("optimizer")
    if spec.get("val_set_size") in (0, 0.0, None):
        spec.use("val_set_size")
    elif spec.get("val_set_size") is not None:
        spec.set_if_known("data.val_split", number(spec.get("val_set_size")), "val_set_size")
    tests = spec.get("test_datasets")
    if isinstance(tests, list) and tests and isinstance(tests[0], dict):
        spec.set_if_known("data.val_path", str(tests[0].get("path")), "test_datasets")


def _logging(spec: SpecBuilder) -> None:
    backends = ["jsonl"]
    if spec.get("use_tensorboard"):
        backends.append("tensorboard")
    if spec.get("wandb_project"):
        backends.append("wandb")
    if spec.get("use_mlflow") or spec.get("mlflow_tracking_uri"):
        backends.append("mlflow")
    sources = [k for k in ("use_tensorboard", "wandb_project", "use_mlflow") if spec.get(k)]
    if sources:
        spec.set("logging.backends", backends, *sources)
    spec.use("use_tensorboard", "use_mlflow")
    spec.skip("mlflow_tracking_uri", "tunegen's MLflow store is <output_dir>/mlruns")
