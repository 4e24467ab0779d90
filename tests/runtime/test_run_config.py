"""Run length, config changes on resume, the resume command, optimizer state on resume, the
metrics log's resume marker, throughput counts and the Ctrl-C handler, in-process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tunegen.runtime import run_config
from tunegen.runtime.checkpointing import Checkpointer, load_training_state
from tunegen.runtime.errors import ConfigError
from tunegen.runtime.interrupt import Interrupted, StopOnSignal
from tunegen.runtime.metric_logging import MetricLogger, real_token_count, throughput
from tunegen.runtime.run_config import (
    RunLength,
    check_resume_changes,
    config_changes,
    effective_config,
    record_invocation,
    resume_command,
)
from tunegen.runtime.schedulers import cosine_with_warmup

CONFIG = """\
training: {epochs: 1, max_steps: 4, batch_size: 8, grad_accum: 1, lr: 0.001, resume: false}
dataloader: {batch_size: '${training.batch_size}', shuffle: true}
checkpointer: {output_dir: runs/x}
environment: {seed: 0}
"""


def config(*overrides: str):
    cfg = OmegaConf.create(CONFIG)
    for override in overrides:
        key, _, value = override.partition("=")
        OmegaConf.update(cfg, key, OmegaConf.create(f"v: {value}").v)
    return cfg


# -- run length --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "max_steps", "line"),
    [
        (1, 30, "training 30 steps (1.2 epochs of 25 steps, batch 4 x accumulation 2 = 8 samples"),
        (2, None, "training 50 steps (2 epochs of 25 steps, batch 4 x accumulation 2 = 8 samples"),
        (9, 25, "training 25 steps (1 epoch of 25 steps, batch 4 x accumulation 2 = 8 samples"),
        (1, 5, "training 5 steps (0.2 epochs of 25 steps, batch 4 x accumulation 2 = 8 samples"),
    ],
)
def test_max_steps_decides_the_length_when_set(epochs, max_steps, line) -> None:
    run = RunLength.from_config(
        epochs=epochs, max_steps=max_steps, steps_per_epoch=25, batch_size=4, grad_accum=2
    )
    assert run.summary() == line + " per step)"
    assert run.total_steps == int(line.split()[1])


# -- config changes ----------------------------------------------------------------------------


def test_changes_list_the_key_users_set_not_the_interpolations() -> None:
    saved = effective_config(config())
    changes = config_changes(saved, config("training.batch_size=4", "training.lr=0.0003"))
    assert [c.describe() for c in changes] == [
        "training.batch_size: 8 -> 4",
        "training.lr: 0.001 -> 0.0003 (the new peak lr, on the same schedule)",
    ]
    assert [c.strict for c in changes] == [True, False]


def test_resume_itself_and_unchanged_keys_are_no_change() -> None:
    saved = effective_config(config())
    assert config_changes(saved, config("training.resume=auto")) == []


def test_allowed_changes_give_one_line_each() -> None:
    saved = effective_config(config())
    changes = config_changes(saved, config("training.max_steps=8", "training.lr=0.01"))
    lines = check_resume_changes(changes, checkpoint=Path("runs/x/step_000004"))
    assert lines == [
        "training.lr: 0.001 -> 0.01 (the new peak lr, on the same schedule)",
        "training.max_steps: 4 -> 8 (the lr schedule spans the new length, continuing from the"
        " saved step)",
    ]


def test_a_strict_change_is_refused_with_the_key_to_set(monkeypatch) -> None:
    monkeypatch.setattr(run_config, "_invocation", None)
    saved = effective_config(config())
    changes = config_changes(
        saved, config("training.batch_size=4", "environment.seed=3", "training.lr=1")
    )
    with pytest.raises(ConfigError) as error:
        check_resume_changes(changes, checkpoint=Path("runs/x/step_000004"))
    assert str(error.value) == (
        "environment.seed: 3 differs from 0 in the checkpoint runs/x/step_000004, so the run"
        " would not continue as it began (also changed: training.batch_size); set"
        " environment.seed=0 to resume it, or start a new run with another"
        " checkpointer.output_dir"
    )


# -- the resume command ------------------------------------------------------------------------


def test_resume_command_repeats_the_run_with_resume_auto(monkeypatch) -> None:
    monkeypatch.setattr(run_config, "_invocation", None)
    record_invocation("generated/x.py", "generated/x.yaml", ["training.lr=1e-4"])
    assert resume_command() == "tunegen run generated/x.py training.lr=1e-4 training.resume=auto"
    record_invocation("x.py", "my config.yaml", ["training.resume=false", "a.b=c d"])
    assert resume_command() == (
        "tunegen run x.py --config 'my config.yaml' 'a.b=c d' training.resume=auto"
    )


# -- optimizer and scheduler state on resume ---------------------------------------------------


def _trained(lr: float, total: int, steps: int):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=lr, weight_decay=0.1)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=1, total_steps=total)
    for _ in range(steps):
        param.grad = torch.full((3,), 0.5)
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def test_an_unchanged_resume_restores_the_exact_state() -> None:
    optimizer, scheduler = _trained(1e-3, total=10, steps=4)
    state = {"optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()}
    fresh_opt, fresh_sched = _trained(1e-3, total=10, steps=0)
    load_training_state(fresh_opt, fresh_sched, state)
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert fresh_sched.last_epoch == 4
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_a_resume_with_new_lr_and_length_uses_them_from_the_saved_step() -> None:
    optimizer, scheduler = _trained(1e-3, total=4, steps=4)  # finished: lr decayed to 0
    state = {"optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()}
    new_opt, new_sched = _trained(3e-4, total=8, steps=0)
    load_training_state(new_opt, new_sched, state)
    reference_opt, reference_sched = _trained(3e-4, total=8, steps=4)
    assert new_opt.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"] > 0
    new_sched.step()
    reference_sched.step()
    assert new_opt.param_groups[0]["lr"] == reference_opt.param_groups[0]["lr"]


# -- metrics log -------------------------------------------------------------------------------


def test_start_at_drops_later_steps_and_marks_the_resume(tmp_path) -> None:
    logger = MetricLogger(log_dir=tmp_path, stdout=False)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    logger.close()
    logger = MetricLogger(log_dir=tmp_path, stdout=False)
    logger.start_at(3)
    logger.log(4, {"loss": 40.0})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 2.0},
        {"step": 3, "loss": 3.0},
        {"event": "resume", "step": 3},
        {"step": 4, "loss": 40.0},
    ]


def test_a_fresh_start_drops_what_a_run_without_checkpoints_logged(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    logger = MetricLogger(log_dir=tmp_path, stdout=False)
    logger.start_at(0)
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


# -- throughput --------------------------------------------------------------------------------


def test_real_tokens_exclude_padding_but_keep_a_final_eos_equal_to_pad() -> None:
    pad = 0
    tokens = torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0], [5, 6, 0, 0]])
    labels = torch.tensor([[-100, 6, 7, -100], [-100, -100, -100, -100], [-100, 6, 0, -100]])
    # Row 3 ends in an eos whose id is the pad id; its label makes it a real token.
    assert real_token_count(tokens, labels, pad_id=pad) == 3 + 1 + 3


def test_throughput_adds_loss_tokens_only_where_they_differ() -> None:
    assert throughput(inputs=100, loss_tokens=40, seconds=2.0) == {
        "tokens_per_s": 50,
        "loss_tokens_per_s": 20,
    }
    assert throughput(inputs=100, loss_tokens=100, seconds=2.0) == {"tokens_per_s": 50}
    assert throughput(inputs=100, seconds=2.0) == {"tokens_per_s": 50}


# -- exports and Ctrl-C ------------------------------------------------------------------------


def test_a_new_checkpoint_removes_the_runs_stale_exports_and_refuses_foreign_ones(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config()
    cfg.export = {"output_dir": "runs/x/peft_adapter"}
    (tmp_path / "runs/x/peft_adapter").mkdir(parents=True)
    (tmp_path / "runs/x/peft_adapter/adapter_config.json").write_text("{}")
    checkpointer = Checkpointer(output_dir="runs/x")
    assert checkpointer.check_resume("auto", config=cfg) is None
    checkpointer.save(1, {"w": torch.zeros(2)})
    assert not (tmp_path / "runs/x/peft_adapter").exists()
    assert (tmp_path / "runs/x/step_000001/config.yaml").is_file()

    cfg.export.output_dir = "elsewhere"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/file").write_text("x")
    with pytest.raises(ConfigError, match=r"export\.output_dir: elsewhere already exists"):
        Checkpointer(output_dir="runs/y").check_resume(False, config=cfg)


def test_the_first_signal_asks_to_stop_and_the_second_stops_at_once(capsys) -> None:
    saved = []
    previous = signal.getsignal(signal.SIGINT)
    stop = StopOnSignal(lambda: saved.append(True), lambda: "runs/x/step_000003")
    try:
        stop.check(2)  # nothing asked yet
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and "stopping after this step" in capsys.readouterr().err
        with pytest.raises(Interrupted) as error:
            os.kill(os.getpid(), signal.SIGINT)
        assert error.value.exit_code == 130
        with pytest.raises(SystemExit) as exit_:
            stop.check(3)
        assert exit_.value.code == 130 and saved == [True]
        assert "interrupted at step 3; checkpoint saved to runs/x/step_000003" in (
            capsys.readouterr().err
        )
    finally:
        stop.signum = None  # release() would stop the test process
        stop.release(3)
    assert signal.getsignal(signal.SIGINT) is previous
