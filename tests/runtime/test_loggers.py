"""Metric backends: what each writes is read back with the backend's own reader."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from tunegen.runtime import loggers
from tunegen.runtime.config import instantiate
from tunegen.runtime.errors import ConfigError
from tunegen.runtime.metric_logging import MetricLogger

RECORDS = [
    (1, {"loss": 3.0, "lr": 1e-3}),
    (2, {"loss": 2.5, "lr": 9e-4}),
    (3, {"loss": 2.0, "lr": 8e-4}),
]


def _log_through(backend: object, tmp_path: Path, records=RECORDS, start: int = 0) -> None:
    logger = MetricLogger(log_dir=tmp_path, stdout=False, backends={"b": backend})
    logger.start_at(start)
    for step, metrics in records:
        logger.log(step, metrics)
    logger.close()


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_event_files_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    _log_through(loggers.TensorBoardLogger(log_dir=tmp_path / "tb"), tmp_path)
    scalars = _scalars(tmp_path / "tb")
    assert scalars["loss"] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert [step for step, _ in scalars["lr"]] == [1, 2, 3]
    assert scalars["lr"][0][1] == pytest.approx(1e-3)


def test_tensorboard_resume_purges_steps_after_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    _log_through(loggers.TensorBoardLogger(log_dir=tmp_path / "tb"), tmp_path)
    again = [(3, {"loss": 1.5}), (4, {"loss": 1.0})]  # resumed from step 2
    _log_through(loggers.TensorBoardLogger(log_dir=tmp_path / "tb"), tmp_path, again, start=2)
    assert _scalars(tmp_path / "tb")["loss"] == [(1, 3.0), (2, 2.5), (3, 1.5), (4, 1.0)]


def test_a_backend_from_the_config(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = instantiate(
        {
            "_component_": "tunegen.runtime.metric_logging.MetricLogger",
            "log_dir": str(tmp_path),
            "backends": {
                "tensorboard": {
                    "_component_": "tunegen.runtime.loggers.TensorBoardLogger",
                    "log_dir": str(tmp_path / "tb"),
                }
            },
        }
    )
    assert isinstance(logger.backends["tensorboard"], loggers.TensorBoardLogger)
    logger.close()


def test_a_missing_library_names_its_extra(monkeypatch) -> None:
    monkeypatch.setitem(loggers._NEEDS, "tensorboard", ("tunegen_no_such_lib", "tensorboard"))
    assert loggers.missing_extra("tensorboard") == (
        "tensorboard is not installed: pip install 'tunegen[tensorboard]'"
    )
    with pytest.raises(ConfigError, match=r"pip install 'tunegen\[tensorboard\]'"):
        instantiate({"_component_": "tunegen.runtime.loggers.TensorBoardLogger", "log_dir": "x"})
    assert loggers.missing_extra("jsonl") is None


def test_wandb_offline_run_holds_the_metrics(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = [*RECORDS, (4, {"loss": math.nan, "lr": 7e-4})]  # NaN stays in metrics.jsonl only
    _log_through(loggers.WandbLogger(log_dir=tmp_path / "wb", name="t"), tmp_path, records)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (data,) = runs[0].glob("*.wandb")
    # wandb's service process may still be writing the file when finish() returns.
    deadline = time.monotonic() + 30
    while len(history := _loss_rows(data)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert history == [
        (1, 3.0),
        (2, 2.5),
        (3, 2.0),
    ]


def _loss_rows(data: Path) -> list[tuple[int, float]]:
    return [(row["_step"], row["loss"]) for row in _wandb_history(data) if "loss" in row]


def _wandb_history(data: Path) -> list[dict]:
    """The history rows of an offline run's .wandb file: a LevelDB-style log (32 KiB blocks of
    records with a 7-byte header: crc32c, little-endian length, type) of protobuf `Record`s,
    after a 7-byte file header (":W&B", magic, version)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    raw = data.read_bytes()
    assert raw[:4] == b":W&B"
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(raw):
        space = 32768 - pos % 32768
        if space < 7:  # block trailer
            pos += space
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


def test_mlflow_file_store_holds_the_metrics(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    _log_through(loggers.MLflowLogger(log_dir=tmp_path / "mlruns", run_name="t"), tmp_path)
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tunegen").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert run.info.status == "FINISHED"
