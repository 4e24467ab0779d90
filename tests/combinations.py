"""Spec settings that combine methods and features: trained end to end by
tests/test_method_combinations.py, and compiled into tests/golden/combinations/ by
scripts/refresh_golden.py so that every feature part's code is reviewed as code."""

from __future__ import annotations

from typing import Any

INSTRUCT = {"path": "data/demo_train.jsonl", "max_seq_len": 64}
PREFERENCE = {"path": "data/demo_preference.jsonl", "format": "preference", "max_seq_len": 64}
TEACHER = {"teacher": "teacher", "temperature": 2.0}

COMBINATIONS: dict[str, dict[str, Any]] = {
    "dpo_dora": {"method": "dpo", "data": PREFERENCE, "lora": {"use_dora": True}},
    "dpo_full_skip_nonfinite": {
        "method": "dpo",
        "data": PREFERENCE,
        "dpo": {"use_lora": False, "loss_type": "ipo"},
        "training": {"on_nonfinite_loss": "skip"},
    },
    "kd_lora_dora_eval_profiler": {
        "method": "kd",
        "kd": {**TEACHER, "use_lora": True},
        "lora": {"use_dora": True},
        "eval": {"path": "data/demo_heldout.jsonl", "max_samples": 2, "max_new_tokens": 4},
        "profiler": {"wait_steps": 0, "warmup_steps": 0, "active_steps": 1},
    },
    "qlora_dora_activation_checkpointing": {
        "method": "qlora",
        "lora": {"use_dora": True, "targets": ["q_proj", "v_proj", "down_proj"]},
        "training": {"activation_checkpointing": True},
    },
    "qlora_merged_export_bf16": {
        "method": "qlora",
        "training": {"dtype": "bf16"},
        "checkpoint": {"export_merged": True},
    },
    "full_packed_activation_checkpointing": {
        "method": "full",
        "data": {**INSTRUCT, "packed": True},
        "training": {"activation_checkpointing": True, "grad_accum": 2},
    },
    "lora_length_buckets": {
        "method": "lora",
        "data": {**INSTRUCT, "bucket_by_length": True},
        "training": {"grad_accum": 2},
    },
    "kd_lora_packed": {
        "method": "kd",
        "kd": {**TEACHER, "use_lora": True},
        "data": {**INSTRUCT, "packed": True},
    },
    "dora_grad_accum_skip_nonfinite": {
        "method": "dora",
        "training": {"grad_accum": 2, "on_nonfinite_loss": "skip"},
    },
    # Validation: held out of the training data (and the best step kept), or its own file
    # (unpacked while training packs), for each objective.
    "lora_val_split_keep_best": {
        "method": "lora",
        "data": {**INSTRUCT, "val_split": 0.02},
        "training": {"val_every_n_steps": 2, "val_max_batches": 4},
        "checkpoint": {"keep_best": "val_loss"},
    },
    "dpo_val_split": {
        "method": "dpo",
        "data": {**PREFERENCE, "val_split": 0.05},
        "training": {"val_max_batches": 2},
    },
    "kd_packed_val_file": {
        "method": "kd",
        "kd": TEACHER,
        "data": {**INSTRUCT, "packed": True, "val_path": "data/demo_heldout.jsonl"},
        "training": {"val_max_batches": 2},
    },
}

# Compiled for review only (tests/golden/combinations/): a recipe without the features every
# shipped spec has (gradient clipping, export); a skipped step that still steps the profiler.
GOLDEN_ONLY: dict[str, dict[str, Any]] = {
    "lora_profiler_skip_nonfinite": {
        "method": "lora",
        "profiler": {"wait_steps": 0, "warmup_steps": 0, "active_steps": 1},
        "training": {"on_nonfinite_loss": "skip"},
    },
    "full_no_clip_no_export": {
        "method": "full",
        "training": {"clip_grad_norm": None},
        "checkpoint": {"export_hf": False},
    },
    # Speed features (issue 18), trained by tests/test_speed_features_end_to_end.py.
    "full_optimizer_in_bwd_compile": {
        "method": "full",
        "training": {"optimizer_in_bwd": True, "clip_grad_norm": None, "compile": True},
    },
    "lora_token_budget_chunked_loss": {
        "method": "lora",
        "training": {"tokens_per_batch": 256, "chunked_loss": True, "grad_accum": 2},
    },
    "full_packed_chunked_loss": {
        "method": "full",
        "data": {**INSTRUCT, "packed": True},
        "training": {"chunked_loss": True, "fused_optimizer": False},
    },
    # GRPO with adapters (the reference is the policy with adapters off), two updates per
    # rollout; and a full fine-tune without a KL term (no reference at all).
    "grpo_lora_dapo_iterations": {
        "method": "grpo",
        "data": {"path": "data/grpo_prompts.jsonl", "format": "prompts", "max_seq_len": 128},
        "grpo": {
            "group_size": 4,
            "max_new_tokens": 8,
            "beta": 0.04,
            "loss_type": "dapo",
            "num_iterations": 2,
            "use_lora": True,
        },
        "reward": ["specs/grpo_rewards.py:exact_match"],
    },
    "grpo_full_no_kl_skip_nonfinite": {
        "method": "grpo",
        "data": {"path": "data/grpo_prompts.jsonl", "format": "prompts", "max_seq_len": 128},
        "grpo": {"group_size": 4, "max_new_tokens": 8, "beta": 0.0, "loss_type": "dr_grpo"},
        "reward": [{"function": "specs/grpo_rewards.py:word_overlap", "weight": 2.0}],
        "training": {"on_nonfinite_loss": "skip"},
    },
    # Distributed recipes run under torchrun (tests/distributed/ trains them).
    "full_distributed_activation_checkpointing": {
        "method": "full",
        "distributed": {"nproc_per_node": 2},
        "training": {"grad_accum": 2, "activation_checkpointing": True},
    },
    "dora_distributed_two_nodes_merged_export": {
        "method": "dora",
        "distributed": {"nproc_per_node": 2, "nnodes": 2, "rdzv_endpoint": "node0:29500"},
        "checkpoint": {"export_merged": True},
    },
}


def combination_spec(
    name: str, settings: dict[str, Any], steps: int, save_every: int | None = None
) -> dict[str, Any]:
    """The spec of a combination: the tiny model on the demo data for `steps` steps."""
    spec = {"name": name, "model": "tiny", "data": INSTRUCT, **settings}
    spec["training"] = {
        "max_steps": steps,
        "batch_size": 4,
        "lr": 2e-3,
        "warmup_steps": 0,
        **settings.get("training", {}),
    }
    spec["checkpoint"] = {
        "output_dir": f"runs/{name}",
        "save_every_n_steps": save_every,
        **settings.get("checkpoint", {}),
    }
    spec["logging"] = {"every_n_steps": 1}
    return spec
