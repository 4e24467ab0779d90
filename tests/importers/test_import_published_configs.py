"""`tunegen import` on torchtune's and axolotl's own published configs (tests/importers/fixtures,
with their licences): every config imports, and the values that decide what trains (method,
learning rate, batch size, accumulation, epochs, LoRA rank, alpha and targets) equal the source's.

The expected values are read from the source here, independently of the importer's tables: the
method from the config's file name (torchtune names each config after what it trains), LoRA
targets by torchtune's documented layer names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from import_helpers import AXOLOTL, REPORT_LINE, TORCHTUNE, fixture_id, import_config, read_yaml

from tunegen.compiler.schema import TrainingSpec

TORCHTUNE_TO_HF = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "output_proj": "o_proj",
}
MLP = ["gate_proj", "down_proj", "up_proj"]  # torchtune's w1, w2, w3
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def torchtune_method(path: Path) -> tuple[str, bool]:
    """(method, use_dora) that a torchtune config's file name says it trains."""
    name = path.stem.lower()
    if "dpo" in name:
        return "dpo", False
    if "kd" in name:
        return "kd", False
    if "qdora" in name:
        return "qlora", True
    for method in ("qlora", "dora", "lora", "full"):
        if method in name:
            return method, False
    raise AssertionError(f"no method in {path.name}")


def test_every_supported_single_device_config_is_here() -> None:
    """One fixture per single-device config of every family tunegen trains (torchtune 0.6.1)."""
    families = {path.parent.name for path in TORCHTUNE}
    assert families == {
        "llama2", "code_llama2", "llama3", "llama3_1", "llama3_2",
        "mistral", "phi3", "phi4", "qwen2", "qwen2_5",
    }  # fmt: skip
    assert len(TORCHTUNE) == 49 and len(AXOLOTL) == 11
    assert (TORCHTUNE[0].parents[1] / "LICENSE").read_text().startswith("BSD 3-Clause")
    assert "Apache License" in (AXOLOTL[0].parents[1] / "LICENSE").read_text()


@pytest.mark.parametrize("config", TORCHTUNE, ids=fixture_id)
def test_torchtune_config_imports_with_its_values(config: Path, tmp_path: Path) -> None:
    source = read_yaml(config)
    status, spec, err = import_config(config, tmp_path / "spec.yaml")
    assert status == 0, err
    method, dora = torchtune_method(config)
    assert spec["method"] == method
    training = spec["training"]
    assert training["lr"] == float(source["optimizer"]["lr"])
    assert training["batch_size"] == source["batch_size"]
    assert training["grad_accum"] == source["gradient_accumulation_steps"]
    assert training["epochs"] == source["epochs"]
    model = source["model"]
    lora = spec.get("lora")
    if "lora_rank" in model:
        targets = [TORCHTUNE_TO_HF[m] for m in model["lora_attn_modules"]]
        targets += MLP if model.get("apply_lora_to_mlp") else []
        assert (lora["rank"], lora["alpha"]) == (model["lora_rank"], model["lora_alpha"])
        assert lora["targets"] == targets
        assert lora.get("use_dora", False) == dora
    else:
        assert lora is None
    assert spec["model"] == source["checkpointer"]["checkpoint_dir"]
    _check_report(err)


@pytest.mark.parametrize("config", AXOLOTL, ids=fixture_id)
def test_axolotl_config_imports_with_its_values(config: Path, tmp_path: Path) -> None:
    source = read_yaml(config)
    status, spec, err = import_config(config, tmp_path / "spec.yaml")
    assert status == 0, err
    adapter = source.get("adapter")
    expected = "dpo" if source.get("rl") == "dpo" else (adapter or "full")
    assert spec["method"] == expected
    assert spec["model"] == source["base_model"]
    assert spec["data"]["path"] == source["datasets"][0]["path"]
    training = spec["training"]
    assert training["lr"] == float(source["learning_rate"])
    assert training["batch_size"] == source["micro_batch_size"]
    assert training["grad_accum"] == source["gradient_accumulation_steps"]
    assert training["epochs"] == source["num_epochs"]
    if adapter:
        lora = spec["lora"]
        assert (lora["rank"], lora["alpha"]) == (source["lora_r"], source["lora_alpha"])
        linear = source.get("lora_target_linear")
        assert lora["targets"] == (ALL_LINEAR if linear else source["lora_target_modules"])
    else:
        assert "lora" not in spec
    _check_report(err)


def _check_report(err: str) -> None:
    """stderr holds report lines only: keys not imported (with a reason), notes, where it went."""
    lines = err.splitlines()
    assert lines and all(REPORT_LINE.match(line) for line in lines), err
    assert lines[-1].startswith("wrote ")


def test_newer_spec_keys_are_mapped_when_this_tunegen_has_them(tmp_path: Path) -> None:
    """compile and optimizer_in_bwd map to training.compile / optimizer_in_bwd where the schema
    has them, and are reported as keys this tunegen lacks where it does not."""
    config = TORCHTUNE[0].parent.parent / "llama2" / "7B_full_low_memory.yaml"
    source = read_yaml(config)
    status, spec, err = import_config(config, tmp_path / "spec.yaml")
    assert status == 0, err
    for key, field in (("compile", "compile"), ("optimizer_in_bwd", "optimizer_in_bwd")):
        if field in TrainingSpec.model_fields:
            assert spec["training"][field] == source[key]
        else:
            assert f"{key}: not imported (this tunegen has no training.{field})" in err


def test_axolotl_validation_split_is_mapped_or_reported(tmp_path: Path) -> None:
    from tunegen.compiler.schema import DataSpec

    config = next(p for p in AXOLOTL if p.name == "lora-1b.yml")
    status, spec, err = import_config(config, tmp_path / "spec.yaml")
    assert status == 0, err
    if "val_split" in DataSpec.model_fields:
        assert spec["data"]["val_split"] == 0.1
    else:
        assert "val_set_size: not imported (this tunegen has no data.val_split)" in err


def test_every_source_key_is_mapped_or_reported(tmp_path: Path) -> None:
    """Keys no table knows, at the top and inside a section, are reported, never dropped."""
    config = tmp_path / "1B_lora_single_device.yaml"
    source = read_yaml(TORCHTUNE[0].parent.parent / "llama3_2" / "1B_lora_single_device.yaml")
    source["made_up_knob"] = 3
    source["optimizer"]["amsgrad"] = True
    config.write_text(yaml.safe_dump(source))
    status, spec, err = import_config(config, tmp_path / "spec.yaml")
    assert status == 0, err
    assert spec["lora"]["rank"] == 64
    assert "made_up_knob: not imported (tunegen has no such setting)" in err.splitlines()
    assert "optimizer.amsgrad: not imported (tunegen has no such setting)" in err.splitlines()
    assert "device: not imported (tunegen picks the device itself: training.device is auto)" in err


def test_spec_header_names_the_source_keys_of_each_non_default_value(tmp_path: Path) -> None:
    config = TORCHTUNE[0].parent.parent / "llama3_2" / "1B_lora_single_device.yaml"
    status, _, err = import_config(config, tmp_path / "spec.yaml")
    assert status == 0, err
    header = [line for line in (tmp_path / "spec.yaml").read_text().splitlines() if line[:1] == "#"]
    assert header[0] == f"# Imported by `tunegen import` from the torchtune config {config}."
    rows = {line.split("<-")[0].strip("# ").strip(): line.split("<- ")[1] for line in header[2:-1]}
    assert rows["lora.rank: 64"] == "model.lora_rank"
    assert rows["training.grad_accum: 8"] == "gradient_accumulation_steps"
    assert rows["method: lora"] == "model._component_"
    assert rows["training.clip_grad_norm: null"] == "clip_grad_norm"
    assert "training.lr: 0.0003" not in rows  # tunegen's default: no row
    not_imported = sum(": not imported (" in line for line in err.splitlines())
    assert not_imported >= 10
    assert header[-1].startswith(f"# {not_imported} source keys were not imported")


def test_without_output_the_spec_goes_to_stdout(tmp_path: Path) -> None:
    from helpers import cli_in_process

    config = next(p for p in AXOLOTL if p.name == "qlora-1b.yml")
    status, out, err = cli_in_process("import", str(config))
    assert status == 0, err
    spec = yaml.safe_load(out)
    assert spec["method"] == "qlora" and spec["name"] == "qlora_1b"
    assert out.startswith("# Imported by `tunegen import` from the axolotl config")
    reported = {line.split(":")[0] for line in err.splitlines()}
    assert "sample_packing" not in reported and spec["data"]["packed"] is True
    assert "eval_sample_packing" in reported
