"""Imported specs compile and train: after pointing model and data at tiny local ones, `tunegen new`
and 3 training steps run (representative configs: each method and both styles), and the config
generated from an imported torchtune config holds the source's values under the same names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tunegen_in_process
from import_helpers import (
    FIXTURES,
    import_config,
    point_at_local,
    read_yaml,
    save_tiny_model,
    write_tiny_data,
)
from omegaconf import OmegaConf

TORCHTUNE_DIR = FIXTURES / "torchtune"
# One per method and style; the phi3 one uses a checkpoint with fused qkv / gate_up weights.
TRAINED = {
    "torchtune/llama3_2/1B_lora_single_device.yaml": "llama",
    "torchtune/qwen2_5/0.5B_full_single_device.yaml": "llama",
    "torchtune/phi3/mini_qlora_single_device.yaml": "phi3",
    "torchtune/llama3/8B_dora_single_device.yaml": "llama",
    "torchtune/llama3_1/8B_lora_dpo_single_device.yaml": "llama",
    "torchtune/qwen2/1.5_to_0.5B_KD_lora_single_device.yaml": "llama",
    "axolotl/llama-3/lora-1b.yml": "llama",
    "axolotl/qwen2/dpo.yaml": "llama",
}
# Keys whose value the test moves to a tiny local model and data set (they must exist to compile).
MOVED = {"tokenizer.path", "checkpointer.checkpoint_dir", "dataset.source", "dataset.data_files"}
# Source keys whose value the generated config holds under another name.
RENAMED = {
    "epochs": "training.epochs",
    "batch_size": "dataloader.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "shuffle": "dataloader.shuffle",
    "lr_scheduler.num_warmup_steps": "lr_scheduler.warmup_steps",
    "clip_grad_norm": "training.clip_grad_norm",
    "model.lora_rank": "lora.rank",
    "model.lora_alpha": "lora.alpha",
    "model.lora_dropout": "lora.dropout",
    "kd_ratio": "training.kd_weight",
    "log_every_n_steps": "logging.every_n_steps",
    "dtype": "environment.dtype",
}
# The torchtune configs whose generated config is compared with the source.
COMPARED = (
    "llama3_2/1B_lora_single_device.yaml",
    "llama3_1/8B_lora_dpo_single_device.yaml",
    "qwen2/1.5_to_0.5B_KD_lora_single_device.yaml",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny local checkpoints (llama, phi3) and data files, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("tiny")
    models = {arch: save_tiny_model(root / arch, arch) for arch in ("llama", "phi3")}
    return {**models, **write_tiny_data(root / "data")}


def _imported_here(config: Path, workdir: Path, tiny: dict[str, Path], arch: str) -> Path:
    spec = workdir / "spec.yaml"
    status, _, err = import_config(config, spec)
    assert status == 0, err
    point_at_local(spec, tiny[arch], tiny)
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINED))
def test_imported_spec_compiles_and_trains_3_steps(
    name: str, workdir: Path, tiny: dict[str, Path]
) -> None:
    spec = _imported_here(FIXTURES / name, workdir, tiny, TRAINED[name])
    made = tunegen_in_process("new", "--spec", str(spec))
    assert made.returncode == 0, made.stderr
    recipe = next(Path("generated").glob("*.py"))
    # 3 steps: torchtune's 100 warmup steps would not fit (the scheduler refuses them)
    # one micro-batch a step keeps this test short on a CPU
    overrides = ("training.max_steps=3", "training.warmup_steps=0", "training.grad_accum=1")
    ran = tunegen_in_process("run", str(recipe), *overrides)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run_dir = Path("runs") / read_yaml(spec)["name"]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2, 3]


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        found: dict[str, object] = {}
        for key, value in node.items():
            found.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {prefix: node}


def shared_values(source: Path, generated: Path) -> dict[str, tuple[object, object]]:
    """Key path -> (source value, generated value), for every key both configs have (component
    names excepted: they name each tool's classes), interpolations resolved."""
    from tunegen.compiler.importers import number

    theirs = _leaves(OmegaConf.to_container(OmegaConf.load(source), resolve=True))
    ours = _leaves(OmegaConf.to_container(OmegaConf.load(generated), resolve=True))
    return {
        key: (number(theirs[key]), ours[key])
        for key in sorted(theirs.keys() & ours.keys())
        if not key.endswith("_component_") and key not in MOVED
    }


@pytest.mark.parametrize("name", COMPARED)
def test_generated_config_keeps_the_source_values_under_the_same_names(
    name: str, workdir: Path, tiny: dict[str, Path]
) -> None:
    spec = workdir / "spec.yaml"
    status, values, err = import_config(TORCHTUNE_DIR / name, spec)
    assert status == 0, err
    source = read_yaml(TORCHTUNE_DIR / name)
    # Only model and data move (they must exist to compile); the run dir stays the source's.
    local = point_at_local(spec, tiny["llama"], tiny)
    local["checkpoint"]["output_dir"] = values["checkpoint"]["output_dir"]
    local["data"]["max_seq_len"] = values["data"].get("max_seq_len", 256)
    spec.write_text(json.dumps(local))
    made = tunegen_in_process("new", "--spec", str(spec))
    assert made.returncode == 0, made.stderr
    shared = shared_values(TORCHTUNE_DIR / name, next(Path("generated").glob("*.yaml")))
    assert {"optimizer.lr", "optimizer.weight_decay", "checkpointer.output_dir"} <= shared.keys()
    for key, (theirs, ours) in shared.items():
        assert theirs == ours, f"{key}: source {theirs!r}, generated {ours!r}"
    assert shared["optimizer.lr"][1] == float(source["optimizer"]["lr"])
    generated = OmegaConf.load(next(Path("generated").glob("*.yaml")))
    renamed = {key: theirs for key, theirs in _leaves(source).items() if key in RENAMED}
    assert len(renamed) >= 9
    for key, theirs in renamed.items():
        ours = OmegaConf.select(generated, RENAMED[key])
        assert ours == theirs, f"{key} -> {RENAMED[key]}: source {theirs!r}, generated {ours!r}"


@pytest.mark.slow
def test_new_user_path_import_validate_new_run(workdir: Path, tiny: dict[str, Path]) -> None:
    """A torchtune user's path: import, validate says what to fix, fix the two paths, new, run."""
    config = TORCHTUNE_DIR / "llama3_2" / "1B_lora_single_device.yaml"
    made = tunegen_in_process("import", str(config), "-o", "my_lora.yaml")
    assert made.returncode == 0, made.stderr
    assert made.stderr.splitlines()[-1] == "wrote my_lora.yaml; next: tunegen validate my_lora.yaml"
    checked = tunegen_in_process("validate", "my_lora.yaml")
    assert checked.returncode == 2
    problems = checked.stderr.splitlines()
    assert problems[0].startswith("error: my_lora.yaml:18: model: '/tmp/Llama-3.2-1B-Instruct/'")
    assert problems[1].startswith(
        "my_lora.yaml:20: data.path: 'yahma/alpaca-cleaned' is not a local"
    )
    assert problems[1].endswith("then set data.path: data/alpaca-cleaned.jsonl")
    text = Path("my_lora.yaml").read_text()
    text = text.replace("model: /tmp/Llama-3.2-1B-Instruct/", f"model: {tiny['llama']}")
    text = text.replace("path: yahma/alpaca-cleaned", f"path: {tiny['instruct']}")
    text = text.replace(
        "output_dir: /tmp/torchtune/llama3_2_1B/lora_single_device", "output_dir: runs/x"
    )
    Path("my_lora.yaml").write_text(text)
    assert tunegen_in_process("validate", "my_lora.yaml").returncode == 0
    assert tunegen_in_process("new", "--spec", "my_lora.yaml").returncode == 0
    recipe = "generated/llama3_2_1B_lora_single_device.py"
    too_short = tunegen_in_process("run", recipe, "training.max_steps=3")
    assert too_short.stderr == (
        "error: training.warmup_steps: 100 warmup steps exceed the run's 3 steps; lower "
        "training.warmup_steps or lengthen the run (training.max_steps)\n"
    )
    ran = tunegen_in_process("run", recipe, "training.max_steps=3", "training.warmup_steps=1")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (Path("runs/x") / "peft_adapter" / "adapter_config.json").is_file()
