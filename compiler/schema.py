"""The spec schema: every key a spec may hold, its type, default, range and one-line doc.

This module is the single source of truth for the spec. The validator (`compiler.validate`), the
generated config's comments and `docs/spec.md` are all derived from these dataclasses, so a key is
added here once and shows up everywhere. Keys are a public contract: extend, never rename.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ADAPTER_METHODS",
    "METHODS",
    "CheckpointSpec",
    "DataSpec",
    "DpoSpec",
    "EvalSpec",
    "KdSpec",
    "LoggingSpec",
    "LoraSpec",
    "ProfilerSpec",
    "Spec",
    "TrainingSpec",
    "doc_of",
    "option",
    "uses_adapters",
    "uses_dora",
]

METHODS = ("full", "lora", "dora", "qlora", "dpo", "kd")
# Methods that are LoRA by definition; dpo and kd train adapters when their `use_lora` says so.
ADAPTER_METHODS = ("lora", "dora", "qlora")


def option(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    choices: tuple[Any, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    kind: str | None = None,
) -> Any:
    """A spec field with its one-line doc and constraints.

    `kind` names a special check: "identifier" (a plain Python identifier) or "path" (a file that must
    exist, relative to the spec's folder).
    """
    metadata = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "kind": kind}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata)
    return field(default=default, metadata=metadata)


def doc_of(cls: type, name: str) -> str:
    """The one-line doc of field `name` of spec section `cls`."""
    return next(f.metadata["doc"] for f in dataclasses.fields(cls) if f.name == name)


@dataclass(frozen=True)
class DataSpec:
    """What to train on."""

    path: str = option(
        doc="training data: a .jsonl or .json file, relative to the spec", kind="path"
    )
    format: Literal["instruct", "chat", "text", "preference"] = option(
        "instruct",
        "instruct: instruction/input/output records; chat: messages or conversations; text: text; "
        "preference: prompt/chosen/rejected (method: dpo)",
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
    max_dropped_fraction: float = option(
        0.01,
        "share of records that may train nothing and be dropped (no assistant turn, no loss "
        "token within max_seq_len); more is an error",
        ge=0,
        le=1,
    )


@dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (method: lora)."""

    rank: int = option(8, "rank r of the low-rank update B @ A", ge=1, le=4096)
    alpha: float = option(16.0, "the update is scaled by alpha / rank", gt=0)
    dropout: float = option(0.0, "dropout on the adapter input", ge=0, le=0.9)
    targets: list[str] = option(
        ["q_proj", "v_proj"],
        "linear layers that get adapters (q_proj, k_proj, v_proj, o_proj, ...)",
    )
    use_dora: bool = option(
        False, "DoRA: also learn each output row's magnitude (method: dora sets this)"
    )


@dataclass(frozen=True)
class DpoSpec:
    """Direct preference optimisation (method: dpo) on data.format: preference."""

    beta: float = option(0.1, "strength of the pull towards the reference model", gt=0)
    loss_type: Literal["sigmoid", "ipo"] = option(
        "sigmoid", "sigmoid: the DPO paper's loss; ipo: squared loss on length-averaged log-probs"
    )
    label_smoothing: float = option(
        0.0, "assumed share of flipped preference labels (sigmoid loss only)", ge=0, le=0.49
    )
    use_lora: bool = option(
        True,
        "train LoRA adapters (the reference is the model with adapters off: no second copy); "
        "false: train every weight against a frozen copy",
    )


@dataclass(frozen=True)
class KdSpec:
    """Knowledge distillation (method: kd): the student learns from a teacher's logits."""

    teacher: str = option(
        doc="the teacher: a trained Hugging Face checkpoint dir with the student's vocabulary, "
        "relative to the spec"
    )
    temperature: float = option(
        1.0, "softens both distributions before the KL (the KL is scaled by temperature^2)", gt=0
    )
    weight: float = option(
        0.5, "w in loss = (1 - w) * cross-entropy + w * KL(teacher || student)", ge=0, le=1
    )
    use_lora: bool | None = option(
        None,
        "train LoRA adapters on the student instead of every weight "
        "(null: when the spec has a lora section)",
    )


@dataclass(frozen=True)
class TrainingSpec:
    """The optimisation loop."""

    epochs: int = option(1, "passes over the training data", ge=1)
    max_steps: int | None = option(
        None, "stop after this many optimizer steps (null: no limit)", ge=1
    )
    batch_size: int = option(4, "samples per micro-batch", ge=1)
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", ge=1)
    lr: float = option(3.0e-4, "peak learning rate (AdamW)", gt=0, le=10)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = option(
        "cosine", "learning-rate schedule after warmup"
    )
    warmup_steps: int = option(0, "steps of linear warmup from 0 to lr", ge=0)
    clip_grad_norm: float | None = option(
        1.0, "clip the gradient norm to this (null: no clipping)", gt=0
    )
    dtype: Literal["fp32", "bf16"] = option("fp32", "parameter and compute dtype")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    seed: int = option(0, "seed for initialisation, data order and dropout", ge=0)
    activation_checkpointing: bool = option(
        False, "recompute activations in the backward pass: less memory, more compute"
    )
    on_nonfinite_loss: Literal["stop", "skip"] = option(
        "stop",
        "at a NaN/inf loss: stop (exit 2, last checkpoint kept) or skip that step's update "
        "(stops anyway after 10 in a row)",
    )


@dataclass(frozen=True)
class CheckpointSpec:
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


@dataclass(frozen=True)
class LoggingSpec:
    """Metrics."""

    every_n_steps: int = option(1, "log loss, lr and tokens/s every N optimizer steps", ge=1)


@dataclass(frozen=True)
class EvalSpec:
    """Exact-match evaluation by greedy generation on held-out instruct data, before and after training."""

    path: str = option(
        doc="held-out instruct data (.jsonl or .json), relative to the spec", kind="path"
    )
    max_samples: int | None = option(100, "evaluate at most this many samples (null: all)", ge=1)
    max_new_tokens: int = option(32, "generation budget per answer", ge=1, le=4096)


@dataclass(frozen=True)
class ProfilerSpec:
    """PyTorch profiler over a few optimizer steps; results go to <output_dir>/profile."""

    wait_steps: int = option(1, "steps to skip before profiling", ge=0)
    warmup_steps: int = option(1, "steps profiled but discarded (warm-up)", ge=0)
    active_steps: int = option(3, "steps recorded", ge=1)


@dataclass(frozen=True)
class Spec:
    """A tunegen spec: what to fine-tune, on what, and how."""

    name: str = option(
        doc="recipe name: generated/<name>.py and generated/<name>.yaml", kind="identifier"
    )
    method: Literal["full", "lora", "dora", "qlora", "dpo", "kd"] = option(
        doc="full: update every weight; lora: low-rank adapters; dora: LoRA + learned magnitudes; "
        "qlora: LoRA on a 4-bit NF4 base; dpo: preference optimisation; kd: distillation"
    )
    model: str = option(
        doc="a built-in model name (tunegen ls lists them) or a local Hugging Face checkpoint dir"
    )
    data: DataSpec = option(doc="training data")
    tokenizer: str | None = option(
        None, "tokenizer file or dir, relative to the spec (null: the model's own)", kind="path"
    )
    lora: LoraSpec | None = option(
        None, "adapter settings (lora, dora, qlora, or dpo/kd with use_lora; defaults if omitted)"
    )
    dpo: DpoSpec | None = option(None, "preference optimisation settings (method: dpo)")
    kd: KdSpec | None = option(None, "distillation settings (method: kd; teacher is required)")
    training: TrainingSpec = option(TrainingSpec(), "optimisation loop")
    checkpoint: CheckpointSpec = option(CheckpointSpec(), "checkpoints and resuming")
    logging: LoggingSpec = option(LoggingSpec(), "metrics")
    eval: EvalSpec | None = option(None, "held-out exact-match evaluation (null: none)")
    profiler: ProfilerSpec | None = option(None, "profile a few steps (null: no profiling)")


def uses_adapters(spec: Spec) -> bool:
    """Whether the spec trains LoRA adapters (on a frozen base) rather than every weight."""
    if spec.method == "dpo":
        return (spec.dpo or DpoSpec()).use_lora
    if spec.method == "kd":
        if spec.kd is None or spec.kd.use_lora is None:
            return spec.lora is not None
        return spec.kd.use_lora
    return spec.method in ADAPTER_METHODS


def uses_dora(spec: Spec) -> bool:
    """Whether the adapters are DoRA (`method: dora`, or `lora.use_dora: true`)."""
    return spec.method == "dora" or (
        uses_adapters(spec) and spec.lora is not None and spec.lora.use_dora
    )
