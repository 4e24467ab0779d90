"""Checkpoints: atomic saves, completeness, pruning, the resume setting and weight loading."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tunegen.runtime import checkpointing
from tunegen.runtime.checkpointing import FORMAT_VERSION, Checkpointer, load_weights_into
from tunegen.runtime.environment import rng_state
from tunegen.runtime.errors import CheckpointError, ConfigError
from tunegen.runtime.schedulers import cosine_with_warmup


class Tiny(nn.Module):
    """Two levels of names, a buffer and tied weights, like a real model."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(8, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 8, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(1))


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(3, 4, generator=generator), "b": torch.arange(5)}


def save_steps(checkpointer: Checkpointer, *steps: int) -> list[Path]:
    return [checkpointer.save(step, tensors(step)) for step in steps]


def names(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


# -- save and load --------------------------------------------------------------------------


def test_round_trip_with_recipe_state(tmp_path) -> None:
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=1, total_steps=10)
    model.embed(torch.tensor([1])).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "step": 30,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "data": {"epoch": 1, "position": 17},
    }

    checkpointer = Checkpointer(output_dir=tmp_path / "run")
    path = checkpointer.save(30, model.state_dict(), recipe_state=state)

    assert path == tmp_path / "run" / "step_000030"
    assert names(tmp_path / "run") == ["step_000030"]  # no temp dir left behind
    assert names(path) == ["checkpoint.json", "model.safetensors", "recipe_state.pt"]
    marker = json.loads((path / "checkpoint.json").read_text())
    assert marker["format_version"] == FORMAT_VERSION
    assert marker["step"] == 30
    assert marker["files"] == {
        "model.safetensors": (path / "model.safetensors").stat().st_size,
        "recipe_state.pt": (path / "recipe_state.pt").stat().st_size,
    }

    loaded, loaded_state = checkpointer.load(path)
    assert loaded.keys() == model.state_dict().keys()  # tied weights saved under both names
    for name, value in model.state_dict().items():
        assert torch.equal(loaded[name], value), name
    assert loaded_state["step"] == 30
    assert loaded_state["data"] == {"epoch": 1, "position": 17}

    fresh = Tiny()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_optimizer.load_state_dict(loaded_state["optimizer"])
    exp_avg = fresh_optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, optimizer.state_dict()["state"][0]["exp_avg"])
    load_weights_into(fresh, loaded)
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_tensors_are_saved_detached_contiguous_and_unshared(tmp_path) -> None:
    base = torch.randn(4, 6, requires_grad=True)
    weights = {
        "transposed": base.detach().t(),  # non-contiguous
        "first": base.detach()[:2],  # shares storage with `whole`
        "whole": base.detach(),
        "grad": base * 2,  # requires grad
        "bf16": torch.randn(3).bfloat16(),
    }
    checkpointer = Checkpointer(output_dir=tmp_path)
    path = checkpointer.save(1, weights, filename="adapter.safetensors")
    loaded, state = checkpointer.load(path, filename="adapter.safetensors")
    assert state is None
    assert loaded.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(loaded[name], value.detach()), name
    assert loaded["bf16"].dtype == torch.bfloat16


def test_refuses_to_overwrite_a_complete_checkpoint(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    path = checkpointer.save(30, tensors(0))
    before = (path / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="step_000030 already holds a complete checkpoint"):
        checkpointer.save(30, tensors(1))
    assert (path / "model.safetensors").read_bytes() == before


def test_refuses_to_write_over_an_incomplete_step_dir(tmp_path) -> None:
    (tmp_path / "step_000030").mkdir()
    (tmp_path / "step_000030" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists but is not a complete checkpoint"):
        Checkpointer(output_dir=tmp_path).save(30, tensors())
    assert (tmp_path / "step_000030" / "notes.txt").read_text() == "mine"


def test_recipe_state_that_weights_only_cannot_load_is_refused_before_writing(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    with pytest.raises(TypeError, match=r"recipe_state\['data'\]\['loss'\] is a numpy.float64"):
        checkpointer.save(1, tensors(), recipe_state={"data": {"loss": np.float64(1.0)}})
    Point = namedtuple("Point", "x y")
    with pytest.raises(TypeError, match=r"recipe_state\['p'\] is a .*Point"):
        checkpointer.save(1, tensors(), recipe_state={"p": Point(1, 2)})
    assert checkpointer.latest() is None
    assert not any(tmp_path.iterdir())


def test_every_accepted_recipe_state_type_loads_with_weights_only(tmp_path) -> None:
    state = {
        "ordered": OrderedDict(a=1),
        "tuple": (1, 2.5, "x", None, True),
        "list": [torch.zeros(2), nn.Parameter(torch.ones(1))],
        "dtype": torch.bfloat16,
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        3: "int keys are fine",
    }
    checkpointer = Checkpointer(output_dir=tmp_path)
    _, loaded = checkpointer.load(checkpointer.save(1, tensors(), recipe_state=state))
    assert loaded["tuple"] == (1, 2.5, "x", None, True)
    assert loaded["size"] == torch.Size([2, 3])
    assert loaded[3] == "int keys are fine"


# -- completeness ---------------------------------------------------------------------------


def test_latest_skips_incomplete_dirs_and_the_next_save_cleans_temp_dirs(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    save_steps(checkpointer, 10, 30)
    # A save killed before its rename: a temp dir with everything but the rename.
    shutil.copytree(tmp_path / "step_000030", tmp_path / ".tmp-step_000040-4242")
    # A step dir without its marker (e.g. copied by hand, marker not yet there).
    shutil.copytree(tmp_path / "step_000030", tmp_path / "step_000050")
    (tmp_path / "step_000050" / "checkpoint.json").unlink()
    # A marker naming a file that is missing, and one whose weights were truncated by a copy.
    shutil.copytree(tmp_path / "step_000030", tmp_path / "step_000060")
    (tmp_path / "step_000060" / "model.safetensors").unlink()
    shutil.copytree(tmp_path / "step_000030", tmp_path / "step_000070")
    with open(tmp_path / "step_000070" / "model.safetensors", "r+b") as file:
        file.truncate(10)
    (tmp_path / "step_000080").write_text("a file, not a dir")

    assert checkpointer.latest() == tmp_path / "step_000030"

    checkpointer.save(90, tensors())
    assert not (tmp_path / ".tmp-step_000040-4242").exists()
    assert checkpointer.latest() == tmp_path / "step_000090"
    assert (tmp_path / "step_000050").exists()  # incomplete step dirs are not ours to delete


def test_latest_on_a_missing_or_empty_dir(tmp_path) -> None:
    assert Checkpointer(output_dir=tmp_path / "nope").latest() is None
    assert Checkpointer(output_dir=tmp_path).latest() is None


def test_latest_orders_by_step_number(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    save_steps(checkpointer, 999_999, 1_000_000, 20)
    assert checkpointer.latest() == tmp_path / "step_1000000"


def test_load_reports_missing_files(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    path = checkpointer.save(30, tensors())
    with pytest.raises(CheckpointError) as error:
        checkpointer.load(path, filename="adapter.safetensors")
    assert (
        str(error.value)
        == f"checkpoint {path} has no adapter.safetensors (it holds model.safetensors)"
    )

    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as error:
        checkpointer.load(path)
    assert str(error.value) == f"checkpoint {path} is incomplete: model.safetensors is missing"

    (path / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: checkpoint\.json is missing"):
        checkpointer.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpointer.load(tmp_path / "step_000099")


def test_load_rejects_a_newer_format(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    path = checkpointer.save(30, tensors())
    marker = json.loads((path / "checkpoint.json").read_text())
    marker["format_version"] = FORMAT_VERSION + 1
    (path / "checkpoint.json").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="newer than this tunegen reads"):
        checkpointer.load(path)
    assert checkpointer.latest() is None


def test_recipe_state_with_arbitrary_objects_is_never_unpickled(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    path = checkpointer.save(30, tensors(), recipe_state={"step": 30})
    # Replace the state with a pickle of an arbitrary class, fixing up the recorded size.
    torch.save({"evil": Tiny}, path / "recipe_state.pt")
    marker = json.loads((path / "checkpoint.json").read_text())
    marker["files"]["recipe_state.pt"] = (path / "recipe_state.pt").stat().st_size
    (path / "checkpoint.json").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match=r"recipe_state\.pt cannot be loaded safely"):
        checkpointer.load(path)


# -- pruning --------------------------------------------------------------------------------


def test_keep_last_prunes_oldest_after_each_save(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path, keep_last=2)
    save_steps(checkpointer, 10, 20)
    assert names(tmp_path) == ["step_000010", "step_000020"]
    save_steps(checkpointer, 30)
    assert names(tmp_path) == ["step_000020", "step_000030"]
    save_steps(checkpointer, 40)
    assert names(tmp_path) == ["step_000030", "step_000040"]


def test_keep_last_never_prunes_before_the_new_checkpoint_is_complete(tmp_path, monkeypatch):
    checkpointer = Checkpointer(output_dir=tmp_path, keep_last=2)
    save_steps(checkpointer, 10, 20)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the user hits Ctrl-C while the optimizer state is written

    monkeypatch.setattr(checkpointing, "_write_torch", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(30, tensors(), recipe_state={"step": 30})
    assert names(tmp_path) == ["step_000010", "step_000020"]  # nothing lost, no temp dir left


def test_keep_last_ignores_incomplete_dirs_and_keeps_the_new_one(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path, keep_last=1)
    (tmp_path / "step_000005").mkdir()
    save_steps(checkpointer, 30)
    save_steps(checkpointer, 20)  # e.g. a run resumed from an earlier checkpoint
    assert names(tmp_path) == ["step_000005", "step_000020"]


@pytest.mark.parametrize("keep_last", [0, -1, 1.5, True])
def test_bad_keep_last_is_a_config_error(tmp_path, keep_last) -> None:
    with pytest.raises(ConfigError, match=r"^checkpointer\.keep_last: must be a positive integer"):
        Checkpointer(output_dir=tmp_path, keep_last=keep_last)


# -- disk space -----------------------------------------------------------------------------


def test_disk_space_is_checked_before_writing(tmp_path, monkeypatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    checkpointer = Checkpointer(output_dir=tmp_path / "run")
    big = {"w": torch.zeros(1024, 1024)}  # 4 MiB
    with pytest.raises(CheckpointError) as error:
        checkpointer.save(30, big, recipe_state={"m": torch.zeros(1024, 1024)})
    assert str(error.value) == (
        f"not enough disk space for checkpoint {tmp_path / 'run' / 'step_000030'}: it needs about"
        f" 9.0 MiB but {tmp_path / 'run'} has 1000 B free"
    )
    assert names(tmp_path / "run") == []


# -- resume ---------------------------------------------------------------------------------


def test_resume_off_on_an_empty_dir_starts_fresh(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path / "run")
    assert checkpointer.resume_from(None) is None
    assert checkpointer.resume_from(False) is None


@pytest.mark.parametrize("resume", [None, False])
def test_resume_off_refuses_a_dir_with_checkpoints(tmp_path, monkeypatch, resume) -> None:
    monkeypatch.chdir(tmp_path)
    checkpointer = Checkpointer(output_dir="runs/x")
    save_steps(checkpointer, 10, 30)
    with pytest.raises(CheckpointError) as error:
        checkpointer.resume_from(resume)
    assert str(error.value) == (
        "runs/x already holds checkpoints (latest step_000030); set training.resume=auto to"
        " continue that run, or choose another checkpointer.output_dir"
    )


def test_resume_off_ignores_incomplete_leftovers(tmp_path) -> None:
    (tmp_path / ".tmp-step_000010-1").mkdir()
    (tmp_path / "step_000010").mkdir()
    assert Checkpointer(output_dir=tmp_path).resume_from(None) is None


def test_resume_auto(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    assert checkpointer.resume_from("auto") is None
    save_steps(checkpointer, 10, 30)
    assert checkpointer.resume_from("auto") == tmp_path / "step_000030"


def test_resume_true_requires_a_checkpoint(tmp_path) -> None:
    checkpointer = Checkpointer(output_dir=tmp_path)
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        checkpointer.resume_from(True)
    save_steps(checkpointer, 10, 30)
    assert checkpointer.resume_from(True) == tmp_path / "step_000030"


def test_resume_from_a_path(tmp_path) -> None:
    old = Checkpointer(output_dir=tmp_path / "old")
    save_steps(old, 10, 30)
    checkpointer = Checkpointer(output_dir=tmp_path / "new")
    assert checkpointer.resume_from(str(tmp_path / "old" / "step_000010")) == (
        tmp_path / "old" / "step_000010"
    )
    assert old.resume_from("step_000010") == tmp_path / "old" / "step_000010"  # relative to dir

    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        checkpointer.resume_from(str(tmp_path / "old" / "step_000020"))
    (tmp_path / "old" / "step_000030" / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_000030 is incomplete: checkpoint\.json is"):
        checkpointer.resume_from(str(tmp_path / "old" / "step_000030"))


def test_resume_rejects_other_values(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^training\.resume: expected"):
        Checkpointer(output_dir=tmp_path).resume_from(3)  # type: ignore[arg-type]


# -- load_weights_into ----------------------------------------------------------------------


def test_load_weights_into_copies_values() -> None:
    source, target = Tiny(), Tiny()
    load_weights_into(target, source.state_dict())
    assert torch.equal(target.norm.weight, source.norm.weight)
    assert target.head.weight is target.embed.weight  # tying survives


def test_load_weights_into_reports_a_missing_key() -> None:
    state = Tiny().state_dict()
    del state["norm.weight"], state["norm.bias"]
    with pytest.raises(CheckpointError) as error:
        load_weights_into(Tiny(), state)
    assert str(error.value) == (
        "model tensor 'norm.weight' is missing from the checkpoint (and 1 more missing)"
    )


def test_load_weights_into_reports_an_unexpected_key() -> None:
    state = Tiny().state_dict()
    state["lm_head.bias"] = torch.zeros(8)
    with pytest.raises(CheckpointError) as error:
        load_weights_into(Tiny(), state)
    assert str(error.value) == "checkpoint tensor 'lm_head.bias' is not in the model"


def test_load_weights_into_reports_a_shape_mismatch() -> None:
    with pytest.raises(CheckpointError) as error:
        load_weights_into(Tiny(dim=8), {"norm.weight": torch.ones(4)}, strict=False)
    assert str(error.value) == (
        "checkpoint tensor 'norm.weight' has shape (4,) but the model expects (8,)"
    )


def test_load_weights_into_non_strict_allows_a_subset() -> None:
    model = Tiny()
    before = model.embed.weight.detach().clone()
    load_weights_into(model, {"norm.weight": torch.full((4,), 3.0)}, strict=False)
    assert torch.equal(model.norm.weight, torch.full((4,), 3.0))
    assert torch.equal(model.embed.weight, before)
    with pytest.raises(CheckpointError, match="'extra' is not in the model"):
        load_weights_into(model, {"extra": torch.zeros(1)}, strict=False)


def test_every_torch_load_in_tunegen_is_weights_only() -> None:
    """Static check over the runtime, compiler and templates: no loader that can run code."""
    import ast

    repo = Path(__file__).resolve().parents[2]
    sources = [*repo.glob("runtime/**/*.py"), *repo.glob("compiler/**/*.py")]
    loads = 0
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            name = f"{getattr(owner, 'id', '?')}.{node.func.attr}"
            assert name not in ("pickle.load", "pickle.loads", "torch.jit.load"), source
            if name == "torch.load":
                loads += 1
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                assert weights_only and getattr(weights_only[0].value, "value", None) is True, (
                    f"{source}:{node.lineno}: torch.load without weights_only=True"
                )
    assert loads >= 1
    for template in repo.glob("templates/**/*.j2"):
        assert "torch.load" not in template.read_text(encoding="utf-8"), template
