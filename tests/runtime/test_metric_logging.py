"""Metric logging: JSON lines appended and flushed, compact stdout lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tunegen.runtime.metric_logging import MetricLogger


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_one_json_line_per_step_and_flushes(tmp_path) -> None:
    logger = MetricLogger(log_dir=tmp_path / "logs" / "run", stdout=False)
    logger.log(1, {"loss": 2.5, "lr": 3e-4, "tokens": 512})
    # Read before close: a killed run must keep what it logged.
    assert lines(tmp_path / "logs" / "run" / "metrics.jsonl") == [
        {"step": 1, "loss": 2.5, "lr": 3e-4, "tokens": 512}
    ]
    logger.log(2, {"loss": 2.25})
    logger.close()
    assert [record["step"] for record in lines(logger.path)] == [1, 2]


def test_reopening_appends(tmp_path) -> None:
    first = MetricLogger(log_dir=tmp_path, filename="train.jsonl", stdout=False)
    first.log(10, {"loss": 1.0})
    first.close()
    resumed = MetricLogger(log_dir=tmp_path, filename="train.jsonl", stdout=False)
    resumed.log(11, {"loss": 0.5})
    resumed.close()
    assert lines(tmp_path / "train.jsonl") == [
        {"step": 10, "loss": 1.0},
        {"step": 11, "loss": 0.5},
    ]


def test_stdout_line_format(tmp_path, capsys) -> None:
    logger = MetricLogger(log_dir=tmp_path)
    logger.log(12, {"loss": 2.34561, "lr": 3e-4, "tokens/s": 1234.4, "tokens": 4096, "grad": 0.0})
    logger.close()
    assert capsys.readouterr().out == (
        "step   12 | loss 2.3456 | lr 3.0e-04 | tokens/s 1,234 | tokens 4,096 | grad 0\n"
    )


def test_tensors_and_numpy_scalars_are_unwrapped(tmp_path, capsys) -> None:
    logger = MetricLogger(log_dir=tmp_path)
    logger.log(3, {"loss": torch.tensor(1.5), "tokens": torch.tensor(7), "norm": np.float32(0.25)})
    logger.close()
    assert lines(logger.path) == [{"step": 3, "loss": 1.5, "tokens": 7, "norm": 0.25}]
    assert capsys.readouterr().out == "step    3 | loss 1.5000 | tokens 7 | norm 0.2500\n"


def test_non_finite_values_stay_strict_json(tmp_path, capsys) -> None:
    logger = MetricLogger(log_dir=tmp_path)
    logger.log(4, {"loss": float("nan"), "grad": float("inf")})
    logger.close()
    text = logger.path.read_text()
    assert text == '{"step": 4, "loss": "NaN", "grad": "Infinity"}\n'
    assert float(json.loads(text)["loss"]) != float(json.loads(text)["loss"])  # NaN round trip
    assert capsys.readouterr().out == "step    4 | loss nan | grad inf\n"


def test_log_text_prints_but_is_not_logged(tmp_path, capsys) -> None:
    logger = MetricLogger(log_dir=tmp_path)
    logger.log_text("resumed from step_000030")
    logger.close()
    assert capsys.readouterr().out == "resumed from step_000030\n"
    assert logger.path.read_text() == ""


def test_stdout_false_is_silent(tmp_path, capsys) -> None:
    logger = MetricLogger(log_dir=tmp_path, stdout=False)
    logger.log(1, {"loss": 1.0})
    logger.log_text("hello")
    logger.close()
    assert capsys.readouterr().out == ""


def test_step_is_not_a_metric(tmp_path) -> None:
    logger = MetricLogger(log_dir=tmp_path, stdout=False)
    with pytest.raises(ValueError, match="'step'"):
        logger.log(1, {"step": 2.0})
    logger.close()
    logger.close()  # closing twice is fine
