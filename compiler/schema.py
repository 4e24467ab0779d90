"""The spec schema: every key a spec may hold, its type, default, range and one-line doc.

This module is the single source of truth for every value a user sets, in a spec or in the config
compiled from it. The spec validator (`compiler.spec_check`), the config pre-flight
(`runtime.preflight`, through `CONFIG_KEYS`), the generated config's comments, `docs/spec.md`
and the JSON Schema that editors use (`tunegen schema`) are all derived from these models, so a key
or a rule is added here once and is enforced and documented everywhere. Keys are a public
contract: extend, never rename.

The models are pydantic v2 models in strict mode with unknown keys forbidden: pydantic does the
type, range and choice checks and reports every error with its location; `explain` turns each
into tunegen's one-line wording. Only pydantic, the standard library and the runtime's config and
error modules are imported here, so the runtime can import this module before a run without
loading torch.
"""

from __future__ import annotations

import functools
import keyword
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as _ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from tunegen.runtime.config import did_you_mean
from tunegen.runtime.errors import out_of_bounds

__all__ = [
    "ADAPTER_METHODS",
    "CONFIG_KEYS",
    "FOREIGN_NAMES",
    "METHODS",
    "SCHEMA_FILE",
    "CheckpointSpec",
    "DataSpec",
    "DistributedSpec",
    "DpoSpec",
    "EvalSpec",
    "GrpoSpec",
    "KdSpec",
    "LoggingSpec",
    "LoraSpec",
    "ProfilerSpec",
    "RewardSpec",
    "Spec",
    "TrainingSpec",
    "bounds_of",
    "check_value",
    "describe_value",
    "doc_of",
    "explain",
    "field_at",
    "json_schema",
    "json_schema_text",
    "option",
    "spec_errors",
    "strip_optional",
    "type_name",
    "uses_adapters",
    "uses_dora",
    "uses_validation",
]

METHODS = ("full", "lora", "dora", "qlora", "dpo", "kd", "grpo")
# Methods that are LoRA by definition; dpo, kd and grpo train adapters when their `use_lora` says so.
ADAPTER_METHODS = ("lora", "dora", "qlora")
SCHEMA_FILE = "spec.schema.json"
"""The JSON Schema shipped next to this module (`tunegen schema -o compiler/spec.schema.json`)."""
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-3` as a string; such a string is the number it spells."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def _identifier(value: str) -> str:
    if not (value.isidentifier() and value.isascii() and not keyword.iskeyword(value)):
        raise PydanticCustomError(
            "identifier",
            "{value} is not a plain Python identifier (letters, digits, _; not a keyword)",
            {"value": repr(value)},
        )
    return value


Number = Annotated[float, BeforeValidator(_yaml_float)]
"""A float that also accepts an integer and YAML 1.1's `1e-3` string."""
Identifier = Annotated[str, AfterValidator(_identifier)]


def option(default: Any = PydanticUndefined, doc: str = "", **constraints: Any) -> Any:
    """A spec field with its one-line doc and constraints (`ge`, `gt`, `le`, `pattern`)."""
    return Field(default, description=doc, **constraints)


class _Section(BaseModel):
    """Strict (no coercion but int -> float), unknown keys are errors, values are immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def doc_of(cls: type[BaseModel], name: str) -> str:
    """The one-line doc of field `name` of spec section `cls`."""
    return cls.model_fields[name].description or ""


class DataSpec(_Section):
    """What to train on."""

    path: str = option(doc="training data: a .jsonl or .json file, relative to the spec")
    format: Literal["instruct", "chat", "text", "preference", "prompts"] = option(
        "instruct",
        "instruct: instruction/input/output records; chat: messages or conversations; text: text; "
        "preference: prompt/chosen/rejected (method: dpo); prompts: prompt or messages, other "
        "fields go to the rewards (method: grpo)",
    )
    template: Literal["alpaca", "plain", "llama3", "chatml", "mistral", "tokenizer"] = option(
        "alpaca",
        "instruct: alpaca or plain; chat: alpaca, llama3, chatml, mistral or tokenizer "
        "(the checkpoint's own chat_template)",
    )
    max_seq_len: int = option(256, "samples are truncated to this many tokens", ge=8, le=1_048_576)
    column: str = option("text", "record field holding the text, for format: text")
    train_on_input: bool = option(
        False, "also compute the loss on prompts and user turns (instruct and chat data)"
    )
    shuffle: bool = option(True, "shuffle the samples every epoch (the order depends only on seed)")
    packed: bool = option(
        False,
        "pack whole samples into rows of max_seq_len tokens (best fit decreasing), each "
        "attending and trained only within itself: no padding (sft, lora, dora, qlora, kd)",
    )
    bucket_by_length: bool = option(
        False,
        "batch samples of similar length (sorted within shuffled windows of 64 batches), so "
        "batches hold little padding without packing (sft, lora, dora, qlora, kd)",
    )
    max_dropped_fraction: float = option(
        0.01,
        "share of records that may train nothing and be dropped (no assistant turn, no loss "
        "token within max_seq_len); more is an error",
        ge=0,
        le=1,
    )
    val_path: str | None = option(
        None,
        "validation data: a separate file in data.format, relative to the spec; its loss is "
        "logged during training (or data.val_split; null: no validation)",
    )
    val_split: Number | None = option(
        None,
        "validation data held out of data.path: this share of its samples, chosen "
        "by training.seed alone and never trained on (or data.val_path; null: no validation)",
        gt=0,
        lt=1,
    )


class LoraSpec(_Section):
    """Low-rank adapters (method: lora)."""

    rank: int = option(8, "rank r of the low-rank update B @ A", ge=1, le=4096)
    alpha: Number = option(16.0, "the update is scaled by alpha / rank", gt=0)
    dropout: Number = option(0.0, "dropout on the adapter input", ge=0, le=0.9)
    targets: list[str] = option(
        ["q_proj", "v_proj"],
        "linear layers that get adapters (q_proj, k_proj, v_proj, o_proj, ...)",
    )
    use_dora: bool = option(
        False, "DoRA: also learn each output row's magnitude (method: dora sets this)"
    )


class DpoSpec(_Section):
    """Direct preference optimisation (method: dpo) on data.format: preference."""

    beta: Number = option(0.1, "strength of the pull towards the reference model", gt=0)
    loss_type: Literal["sigmoid", "ipo"] = option(
        "sigmoid", "sigmoid: the DPO paper's loss; ipo: squared loss on length-averaged log-probs"
    )
    label_smoothing: Number = option(
        0.0, "assumed share of flipped preference labels (sigmoid loss only)", ge=0, le=0.49
    )
    use_lora: bool = option(
        True,
        "train LoRA adapters (the reference is the model with adapters off: no second copy); "
        "false: train every weight against a frozen copy",
    )


class KdSpec(_Section):
    """Knowledge distillation (method: kd): the student learns from a teacher's logits."""

    teacher: str = option(
        doc="the teacher: a trained Hugging Face checkpoint dir with the student's vocabulary, "
        "relative to the spec"
    )
    temperature: Number = option(
        1.0, "softens both distributions before the KL (the KL is scaled by temperature^2)", gt=0
    )
    weight: Number = option(
        0.5, "w in loss = (1 - w) * cross-entropy + w * KL(teacher || student)", ge=0, le=1
    )
    use_lora: bool | None = option(
        None,
        "train LoRA adapters on the student instead of every weight "
        "(null: when the spec has a lora section)",
    )


class GrpoSpec(_Section):
    """Group-relative policy optimisation (method: grpo) on data.format: prompts."""

    group_size: int = option(
        8, "completions sampled per prompt; each is rewarded relative to its group", ge=2, le=1024
    )
    max_new_tokens: int = option(32, "generation budget per completion", ge=1, le=32768)
    temperature: Number = option(
        1.0, "sampling temperature (the loss scores the same tempered distribution)", gt=0, le=10
    )
    top_p: Number = option(
        1.0,
        "nucleus sampling: sample from the smallest token set holding this probability",
        gt=0,
        le=1,
    )
    beta: Number = option(
        0.0, "weight of the KL to the reference model (0: no KL term and no reference)", ge=0
    )
    epsilon: Number = option(
        0.2, "clip range of the policy ratio: [1 - epsilon, 1 + epsilon]", gt=0, le=1
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = option(
        "grpo",
        "grpo: per-completion token mean, then batch mean; dapo: token mean over the batch; "
        "dr_grpo: token sum / (completions x max_new_tokens), advantages not divided by the std",
    )
    num_iterations: int = option(
        1,
        "policy updates on each batch of completions (the ratio's old policy is the sampler)",
        ge=1,
        le=64,
    )
    mask_truncated: bool = option(
        False, "completions cut off at max_new_tokens carry no loss (DAPO's overlong filtering)"
    )
    log_completions_every_n_steps: int | None = option(
        10, "log a few sampled completions with their rewards every N steps (null: never)", ge=1
    )
    use_lora: bool | None = option(
        None,
        "train LoRA adapters (the reference is the model with adapters off) instead of every "
        "weight (null: when the spec has a lora section)",
    )


class RewardSpec(_Section):
    """A weighted reward function (an entry of `reward`)."""

    function: str = option(
        doc="FILE.py:FUNCTION, f(prompts, completions, **fields) -> list[float]; the file is "
        "relative to the spec"
    )
    weight: Number = option(1.0, "the function's weight in the total reward")


class TrainingSpec(_Section):
    """The optimisation loop."""

    epochs: int = option(1, "passes over the training data (when max_steps is null)", ge=1)
    max_steps: int | None = option(
        None,
        "the run's length in optimizer steps, epochs then follow (null: training.epochs decides)",
        ge=1,
    )
    batch_size: int = option(4, "samples per micro-batch", ge=1)
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", ge=1)
    lr: Number = option(3.0e-4, "peak learning rate (AdamW)", gt=0, le=10)
    weight_decay: Number = option(0.0, "AdamW weight decay", ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = option(
        "cosine", "learning-rate schedule after warmup"
    )
    warmup_steps: int = option(0, "steps of linear warmup from 0 to lr", ge=0)
    clip_grad_norm: Number | None = option(
        1.0, "clip the gradient norm to this (null: no clipping)", gt=0
    )
    dtype: Literal["fp32", "bf16", "auto"] = option(
        "fp32",
        "parameter and compute dtype; bf16 only where the hardware has it (CUDA, or a CPU with "
        "AVX512-BF16/AMX): CPUs without it run bf16 slower than fp32; auto: bf16 where the "
        "device computes it natively, else fp32 (the run's first lines say which)",
    )
    device: str = option(
        "auto", "auto, cpu, cuda, cuda:N or mps", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$"
    )
    seed: int = option(0, "seed for initialisation, data order and dropout", ge=0)
    activation_checkpointing: bool = option(
        False, "recompute activations in the backward pass: less memory, more compute"
    )
    on_nonfinite_loss: Literal["stop", "skip"] = option(
        "stop",
        "at a NaN/inf loss: stop (exit 2, last checkpoint kept) or skip that step's update "
        "(stops anyway after 10 in a row)",
    )
    val_every_n_steps: int | None = option(
        None,
        "validate every N optimizer steps and at the last step (null: at the end of every epoch "
        "and at the last step); needs data.val_path or data.val_split",
        ge=1,
    )
    val_max_batches: int | None = option(
        None,
        "validate on the first N batches of the validation data (null: all of it)",
        ge=1,
    )
    # Speed and memory (issue 18); each is measured in docs/benchmarks.md.
    compile: bool = option(
        False,
        "compile each transformer block with torch.compile (regional: one compile serves every "
        "layer); faster steps after a compile of seconds to minutes; on CPU it needs a C++ compiler",
    )
    chunked_loss: bool | Literal["auto"] = option(
        "auto",
        "compute the cross-entropy from the final hidden states a chunk of rows at a time, "
        "skipping rows without a target: the batch's fp32 logits never exist at once (method "
        "full, lora, dora, qlora); auto: on wherever it applies (single-device SFT), as it "
        "measured as fast or faster than the plain loss on CPU, and smaller. The recipe then "
        "calls the loss as loss(hidden, output_weight, labels): set false to plug in a loss of "
        "your own on logits, loss(logits, labels)",
    )
    fused_optimizer: bool = option(
        True,
        "AdamW's fused kernel (torch.optim.AdamW(fused=True)): one pass per parameter, measured "
        "2.3x faster than the default on CPU; false: torch's default implementation",
    )
    optimizer_in_bwd: bool = option(
        False,
        "full fine-tuning: update each parameter as soon as its gradient is ready and free the "
        "gradient (less memory); needs grad_accum 1 and clip_grad_norm null",
    )
    tokens_per_batch: int | None = option(
        None,
        "token-budget batches instead of batch_size samples: samples of similar length, as many "
        "as fit N tokens once padded (at least data.max_seq_len; null: batch_size samples)",
        ge=8,
    )


class CheckpointSpec(_Section):
    """Where and when checkpoints are written."""

    output_dir: str | None = option(
        None, "run directory, relative to the spec (null: runs/<name> in the working directory)"
    )
    save_every_n_steps: int | None = option(
        None, "also save every N optimizer steps (null: only at the end)", ge=1
    )
    keep_last: int | None = option(
        None, "keep only the newest K checkpoints (null: keep all)", ge=1
    )
    resume: bool | str = option(
        False, "false, auto (latest checkpoint if any), true (latest, required) or a checkpoint dir"
    )
    export_hf: bool = option(
        True,
        "at the end, write what transformers/peft load: full -> hf_model/, lora -> peft_adapter/",
    )
    export_merged: bool = option(
        False, "lora: also write the model with adapters merged in, to hf_model/"
    )
    keep_best: Literal["val_loss"] | None = option(
        None,
        "val_loss: also keep the weights of the step with the lowest validation loss in "
        "<output_dir>/best/, which keep_last never prunes (needs data.val_path or data.val_split)",
    )


class LoggingSpec(_Section):
    """Metrics."""

    every_n_steps: int = option(1, "log loss, lr and tokens/s every N optimizer steps", ge=1)
    backends: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = option(
        ["jsonl"],
        "where metrics go: jsonl (metrics.jsonl, always written), tensorboard, wandb (offline), "
        "mlflow (local file store); each but jsonl is an extra: pip install 'tunegen[NAME]'",
    )
    progress: Literal["auto", "bar", "lines"] = option(
        "auto",
        "console: auto (a live progress line on a terminal, plain log lines otherwise), bar, lines",
    )


class EvalSpec(_Section):
    """Exact-match evaluation by greedy generation on held-out instruct data, before and after training."""

    path: str = option(doc="held-out instruct data (.jsonl or .json), relative to the spec")
    max_samples: int | None = option(100, "evaluate at most this many samples (null: all)", ge=1)
    max_new_tokens: int = option(32, "generation budget per answer", ge=1, le=4096)


class ProfilerSpec(_Section):
    """PyTorch profiler over a few optimizer steps; results go to <output_dir>/profile."""

    wait_steps: int = option(1, "steps to skip before profiling", ge=0)
    warmup_steps: int = option(1, "steps profiled but discarded (warm-up)", ge=0)
    active_steps: int = option(3, "steps recorded", ge=1)


class DistributedSpec(_Section):
    """Several processes (GPUs, or CPU processes with gloo), the model sharded with FSDP2;
    training.batch_size is per process, so a step trains batch_size x grad_accum x
    nproc_per_node x nnodes samples."""

    nproc_per_node: int = option(
        2, "processes per machine, one per GPU (torchrun --nproc-per-node)", ge=1
    )
    nnodes: int = option(1, "machines (torchrun --nnodes)", ge=1)
    node_rank: int = option(0, "this machine's rank, 0 to nnodes - 1 (torchrun --node-rank)", ge=0)
    rdzv_endpoint: str | None = option(
        None, "host:port of the c10d rendezvous, needed with nnodes > 1 (torchrun --rdzv-endpoint)"
    )
    strategy: Literal["fsdp"] = option(
        "fsdp", "fsdp: FSDP2 fully_shard, weights, gradients and optimizer state sharded"
    )
    reshard_after_forward: bool = option(
        True, "free each block's gathered weights after forward: less memory, one more all-gather"
    )
    cpu_offload: bool = option(
        False, "keep the shards and optimizer state in CPU memory (CUDA runs; slower)"
    )


class Spec(_Section):
    """A tunegen spec: what to fine-tune, on what, and how."""

    name: Identifier = option(doc="recipe name: generated/<name>.py and generated/<name>.yaml")
    method: Literal["full", "lora", "dora", "qlora", "dpo", "kd", "grpo"] = option(
        doc="full: update every weight; lora: low-rank adapters; dora: LoRA + learned magnitudes; "
        "qlora: LoRA on a 4-bit NF4 base; dpo: preference optimisation; kd: distillation; "
        "grpo: online RL with reward functions"
    )
    model: str = option(
        doc="a built-in model name (tunegen ls lists them) or a local Hugging Face checkpoint dir"
    )
    data: DataSpec = option(doc="training data")
    tokenizer: str | None = option(
        None, "tokenizer file or dir, relative to the spec (null: the model's own)"
    )
    lora: LoraSpec | None = option(
        None, "adapter settings (lora, dora, qlora, or dpo/kd with use_lora; defaults if omitted)"
    )
    dpo: DpoSpec | None = option(None, "preference optimisation settings (method: dpo)")
    kd: KdSpec | None = option(None, "distillation settings (method: kd; teacher is required)")
    grpo: GrpoSpec | None = option(None, "group sampling and the policy objective (method: grpo)")
    reward: list[str | RewardSpec] | None = option(
        None,
        "method: grpo: reward functions, each FILE.py:FUNCTION or {function: FILE.py:FUNCTION, "
        "weight: w}; the total reward is the weighted sum",
    )
    training: TrainingSpec = option(TrainingSpec(), "optimisation loop")
    checkpoint: CheckpointSpec = option(CheckpointSpec(), "checkpoints and resuming")
    logging: LoggingSpec = option(LoggingSpec(), "metrics")
    eval: EvalSpec | None = option(None, "held-out exact-match evaluation (null: none)")
    profiler: ProfilerSpec | None = option(None, "profile a few steps (null: no profiling)")
    distributed: DistributedSpec | None = option(
        None, "train on several processes with FSDP2 (null: one device)"
    )


CONFIG_KEYS: dict[str, str] = {
    "model.max_seq_len": "data.max_seq_len",
    "teacher_model.max_seq_len": "data.max_seq_len",
    "lora.rank": "lora.rank",
    "lora.alpha": "lora.alpha",
    "lora.dropout": "lora.dropout",
    "lora.targets": "lora.targets",
    "checkpointer.keep_last": "checkpoint.keep_last",
    "dataset.template": "data.template",
    "dataset.train_on_input": "data.train_on_input",
    "dataset.column": "data.column",
    "dataset.max_seq_len": "data.max_seq_len",
    "dataset.max_dropped_fraction": "data.max_dropped_fraction",
    "dataloader.batch_size": "training.batch_size",
    "dataloader.shuffle": "data.shuffle",
    "optimizer.lr": "training.lr",
    "optimizer.weight_decay": "training.weight_decay",
    "lr_scheduler.warmup_steps": "training.warmup_steps",
    "loss.beta": "dpo.beta",
    "loss.loss_type": "dpo.loss_type",
    "loss.label_smoothing": "dpo.label_smoothing",
    "kd_loss.temperature": "kd.temperature",
    "training.epochs": "training.epochs",
    "training.max_steps": "training.max_steps",
    "training.batch_size": "training.batch_size",
    "training.grad_accum": "training.grad_accum",
    "training.lr": "training.lr",
    "training.weight_decay": "training.weight_decay",
    "training.warmup_steps": "training.warmup_steps",
    "training.kd_weight": "kd.weight",
    "training.clip_grad_norm": "training.clip_grad_norm",
    "training.save_every_n_steps": "checkpoint.save_every_n_steps",
    "training.resume": "checkpoint.resume",
    "training.val_every_n_steps": "training.val_every_n_steps",
    "training.val_max_batches": "training.val_max_batches",
    "checkpointer.keep_best": "checkpoint.keep_best",
    "dataloader.val_split": "data.val_split",
    "val_dataset.template": "data.template",
    "val_dataset.train_on_input": "data.train_on_input",
    "val_dataset.column": "data.column",
    "val_dataset.max_seq_len": "data.max_seq_len",
    "val_dataset.max_dropped_fraction": "data.max_dropped_fraction",
    "grpo.group_size": "grpo.group_size",
    "grpo.max_new_tokens": "grpo.max_new_tokens",
    "grpo.temperature": "grpo.temperature",
    "grpo.top_p": "grpo.top_p",
    "grpo.beta": "grpo.beta",
    "grpo.epsilon": "grpo.epsilon",
    "grpo.loss_type": "grpo.loss_type",
    "grpo.num_iterations": "grpo.num_iterations",
    "grpo.mask_truncated": "grpo.mask_truncated",
    "grpo.log_completions_every_n_steps": "grpo.log_completions_every_n_steps",
    "loss.variant": "grpo.loss_type",
    "loss.epsilon": "grpo.epsilon",
    "loss.kl_beta": "grpo.beta",
    "loss.max_new_tokens": "grpo.max_new_tokens",
    "loss.mask_truncated": "grpo.mask_truncated",
    "dataset.max_new_tokens": "grpo.max_new_tokens",
    "eval.template": "data.template",
    "eval.max_samples": "eval.max_samples",
    "eval.max_new_tokens": "eval.max_new_tokens",
    "profiler.wait_steps": "profiler.wait_steps",
    "profiler.warmup_steps": "profiler.warmup_steps",
    "profiler.active_steps": "profiler.active_steps",
    "logging.every_n_steps": "logging.every_n_steps",
    "logging.progress": "logging.progress",
    "environment.device": "training.device",
    "environment.dtype": "training.dtype",
    "optimizer.fused": "training.fused_optimizer",
    "training.tokens_per_batch": "training.tokens_per_batch",
    "environment.seed": "training.seed",
    "distributed.nproc_per_node": "distributed.nproc_per_node",
    "distributed.nnodes": "distributed.nnodes",
    "distributed.node_rank": "distributed.node_rank",
    "distributed.rdzv_endpoint": "distributed.rdzv_endpoint",
    "distributed.reshard_after_forward": "distributed.reshard_after_forward",
    "distributed.cpu_offload": "distributed.cpu_offload",
}
"""Each generated-config key that holds a spec value, and the spec key it comes from.

The pre-flight holds such a config key (after overrides and interpolation) to exactly the spec
key's rules, so `training.batch_size=0` on the command line fails as `batch_size: 0` in the spec
would. A test compiles every shipped spec and checks each entry against the config it produces.
"""

FOREIGN_NAMES: dict[str, str] = {
    # Hugging Face Trainer
    "learning_rate": "training.lr",
    "num_train_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "max_grad_norm": "training.clip_grad_norm",
    "lr_scheduler_type": "training.scheduler",
    "gradient_checkpointing": "training.activation_checkpointing",
    "logging_steps": "logging.every_n_steps",
    "save_steps": "checkpoint.save_every_n_steps",
    "save_total_limit": "checkpoint.keep_last",
    "resume_from_checkpoint": "checkpoint.resume",
    "eval_steps": "training.val_every_n_steps",
    "model_name_or_path": "model",
    "max_seq_length": "data.max_seq_len",
    # axolotl
    "micro_batch_size": "training.batch_size",
    "num_epochs": "training.epochs",
    "base_model": "model",
    "datasets": "data",
    "sequence_len": "data.max_seq_len",
    "train_on_inputs": "data.train_on_input",
    "lora_r": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.targets",
    "target_modules": "lora.targets",
    "peft_use_dora": "lora.use_dora",
    "dpo_beta": "dpo.beta",
    "lr_scheduler": "training.scheduler",
    "val_set_size": "data.val_split",
    # TRL (GRPOConfig)
    "num_generations": "grpo.group_size",
    "max_completion_length": "grpo.max_new_tokens",
    "mask_truncated_completions": "grpo.mask_truncated",
    "reward_funcs": "reward",
    "reward_weights": "reward",
    # torchtune
    "lora_rank": "lora.rank",
    "lora_attn_modules": "lora.targets",
    "num_warmup_steps": "training.warmup_steps",
    "log_every_n_steps": "logging.every_n_steps",
    "enable_activation_checkpointing": "training.activation_checkpointing",
    "nproc_per_node": "distributed.nproc_per_node",
    "num_processes": "distributed.nproc_per_node",
}
"""Names users bring from HF Trainer, axolotl and torchtune, and the spec key each one means."""


def uses_adapters(spec: Spec) -> bool:
    """Whether the spec trains LoRA adapters (on a frozen base) rather than every weight."""
    if spec.method == "dpo":
        return (spec.dpo or DpoSpec()).use_lora
    if spec.method in ("kd", "grpo"):
        section = spec.kd if spec.method == "kd" else spec.grpo
        if section is None or section.use_lora is None:
            return spec.lora is not None
        return section.use_lora
    return spec.method in ADAPTER_METHODS


def uses_dora(spec: Spec) -> bool:
    """Whether the adapters are DoRA (`method: dora`, or `lora.use_dora: true`)."""
    return spec.method == "dora" or (
        uses_adapters(spec) and spec.lora is not None and spec.lora.use_dora
    )


def uses_validation(spec: Spec) -> bool:
    """Whether the spec validates during training (`data.val_path` or `data.val_split`)."""
    return spec.data.val_path is not None or spec.data.val_split is not None


# --------------------------------------------------------------------------------------------------
# Checking values and explaining errors


def spec_errors(values: Any) -> tuple[Spec | None, list[tuple[str, str]]]:
    """Validate raw spec values: the typed spec (None if invalid) and every problem as
    `(key path, message)`, unknown keys of a section before its fields, fields in schema order."""
    try:
        return Spec.model_validate(values), []
    except _ValidationError as exc:
        found: dict[str, tuple[tuple, str]] = {}
        for error in exc.errors():
            path, field = field_at(error["loc"])
            key_path = _key_path(path)
            if key_path not in found:
                found[key_path] = (_order(path), explain(error, field, section_keys(path[:-1])))
        ordered = sorted(found.items(), key=lambda item: item[1][0])
        return None, [(key_path, message) for key_path, (_, message) in ordered]


def check_value(spec_key: str, value: Any) -> tuple[str, str] | None:
    """Why `value` breaks the rules of spec key `spec_key`, or None if it keeps them.

    The answer is `(where, message)`: `where` is "" for the value itself, or `[i]` for an item of a
    list, to append to the key path the value sits at.
    """
    try:
        _adapter(spec_key).validate_python(value)
    except _ValidationError as exc:
        error = exc.errors()[0]
        path, field = field_at((*spec_key.split("."), *error["loc"]))
        where = "".join(f"[{part}]" for part in path if isinstance(part, int))
        return where, explain(error, field, ())
    return None


@functools.cache
def _adapter(spec_key: str) -> TypeAdapter:
    """A validator for one spec key, with its type and constraints."""
    _, field = field_at(tuple(spec_key.split(".")))
    return TypeAdapter(Annotated[field.annotation, field], config=ConfigDict(strict=True))


def field_at(loc: Sequence[Any]) -> tuple[tuple[Any, ...], FieldInfo | None]:
    """Follow an error location through the schema: the key path it names (union member tags
    dropped) and the field there (a list item's field is its list's, with the item type)."""
    model: Any = Spec
    field: FieldInfo | None = None
    path: list[Any] = []
    for part in loc:
        hint = strip_optional(field.annotation) if field is not None else None
        if field is None and isinstance(part, str) and part in model.model_fields:
            field = model.model_fields[part]
        elif field is not None and _is_model(hint) and isinstance(part, str):
            if part not in hint.model_fields:
                return (*path, part), None
            field = hint.model_fields[part]
        elif field is not None and typing.get_origin(hint) is list and isinstance(part, int):
            field = FieldInfo(annotation=typing.get_args(hint)[0], description=field.description)
        elif field is None:
            return (*path, part), None
        else:
            break  # a union member's tag: the error is about the value at `path`
        path.append(part)
    return tuple(path), field


def section_keys(path: Sequence[Any]) -> tuple[str, ...]:
    """The keys the spec section at `path` allows (the top level for an empty path)."""
    if not path:
        return tuple(Spec.model_fields)
    _, field = field_at(path)
    hint = strip_optional(field.annotation) if field is not None else None
    return tuple(hint.model_fields) if _is_model(hint) else ()


def explain(error: Mapping[str, Any], field: FieldInfo | None, keys: Sequence[str]) -> str:
    """One pydantic error in tunegen's words (`must be at least 1, got 0`, ...)."""
    kind, value = error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key{_suggest(str(error['loc'][-1]), keys, error['loc'][:-1])}"
    if kind == "missing":
        return f"missing required key ({field.description if field else ''})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return out_of_bounds(value, **ctx) or error["msg"]
    if kind == "identifier":
        return error["msg"]
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not {field.description if field else ctx.get('pattern')}"
    hint = field.annotation if field is not None else Any
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {describe_value(value)}"
    if value is None:
        return f"must not be null (expected {type_name(hint)})"
    choices = _choices(hint)
    if choices and not isinstance(value, (list, dict)):
        close = did_you_mean(str(value), [str(c) for c in choices], cutoff=0.7)
        return f"{value!r} is not one of {', '.join(map(str, choices))}{close}"
    return f"expected {type_name(hint)}, got {describe_value(value)}"


def _suggest(word: str, keys: Sequence[str], section: Sequence[Any]) -> str:
    """The did-you-mean for an unknown spec key: a name from another tool, a close key of the
    same section, or the section that has this key."""
    here = _key_path(section)
    known = {}
    if word in FOREIGN_NAMES:
        parent, _, name = FOREIGN_NAMES[word].rpartition(".")
        known[word] = name if parent == here else FOREIGN_NAMES[word]
    close = did_you_mean(word, keys, cutoff=0.7, known=known)
    if close or not section:
        return close
    elsewhere = [
        f"{name}.{word}"
        for name in Spec.model_fields
        if word in section_keys((name,)) and name != here
    ]
    return f"; {word!r} belongs in {' or '.join(elsewhere)}" if elsewhere else ""


def _order(path: Sequence[Any]) -> tuple[int, ...]:
    """Sort key of an error at `path`: a section's unknown keys first, then its fields in order."""
    order = []
    for depth, part in enumerate(path):
        keys = section_keys(path[:depth])
        order.append(keys.index(part) if part in keys else (part if isinstance(part, int) else -1))
    return tuple(order)


def _key_path(path: Sequence[Any]) -> str:
    text = ""
    for part in path:
        text = f"{text}[{part}]" if isinstance(part, int) else (f"{text}.{part}" if text else part)
    return text


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def _choices(hint: Any) -> tuple[Any, ...]:
    hint = _unwrap(strip_optional(hint))
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _unwrap(hint: Any) -> Any:
    """`Annotated[X, ...]` -> `X`."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(hint)


def strip_optional(hint: Any) -> Any:
    """`X | None` -> `X`; other hints unchanged."""
    if not _optional(hint):
        return hint
    rest = [a for a in typing.get_args(hint) if a is not type(None)]
    return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007


def type_name(hint: Any) -> str:
    """How a type hint reads in errors and docs: `an integer`, `one of a, b`, ..."""
    hint = _unwrap(strip_optional(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if origin is list:
        return f"a list of {type_name(typing.get_args(hint)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if _is_model(hint):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def describe_value(raw: Any) -> str:
    """A value as errors show it: `a string ('one')`, `an integer (0)`, `a list`."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "a mapping"
    return f"{kinds.get(type(raw), type(raw).__name__)} ({raw!r})"


def bounds_of(field: FieldInfo) -> dict[str, float]:
    """A field's numeric bounds, e.g. `{"ge": 1, "le": 4096}`."""
    found = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


def json_schema_text() -> str:
    """`json_schema()` as the text of a `.schema.json` file (`tunegen schema` prints it)."""
    import json

    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12), with every key's doc as its description."""
    schema = Spec.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }
