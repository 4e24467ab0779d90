"""Metric backends beside metrics.jsonl: TensorBoard, Weights & Biases (offline), MLflow (local).

`MetricLogger` passes every record it logs to each backend of its `backends` mapping, built from
the config:

    logging:
      metric_logger:
        _component_: tunegen.runtime.metric_logging.MetricLogger
        log_dir: ${checkpointer.output_dir}
        backends:
          tensorboard:
            _component_: tunegen.runtime.loggers.TensorBoardLogger
            log_dir: ${checkpointer.output_dir}/tensorboard

Each backend's library is an optional extra (`pip install 'tunegen[tensorboard]'`); it is imported
when the backend is built, so a run that does not use it never loads it, and a missing one is a
one-line error naming the extra. None of them needs a network: W&B runs in offline mode (sync
later with `wandb sync`), MLflow writes a local file store (`mlflow ui --backend-store-uri DIR`).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

__all__ = [
    "BACKENDS",
    "Backend",
    "MLflowLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "missing_extra",
]


class Backend(Protocol):
    """What MetricLogger calls: `start_at` once before training, `log` per record, `close`."""

    def start_at(self, step: int) -> None: ...

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


# backend name -> (the module it needs, the pip extra that installs it)
_NEEDS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def missing_extra(backend: str) -> str | None:
    """Why `backend` cannot run here (its library is not installed), or None if it can."""
    if backend not in _NEEDS:
        return None
    module, extra = _NEEDS[backend]
    if importlib.util.find_spec(module) is not None:
        return None
    return f"{backend} is not installed: pip install 'tunegen[{extra}]'"


def _require(backend: str) -> ModuleType:
    """Import the library a backend needs; a missing one is a ValueError naming the extra."""
    problem = missing_extra(backend)
    if problem is not None:
        raise ValueError(problem)
    return importlib.import_module(_NEEDS[backend][0])


class TensorBoardLogger:
    """Scalars to TensorBoard event files in `log_dir` (`tensorboard --logdir DIR` shows them).

    A resumed run purges events after the step it resumes from, as metrics.jsonl drops them.
    """

    def __init__(self, *, log_dir: str | Path) -> None:
        _require("tensorboard")
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def start_at(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        # Events from step + 1 on (logged after the checkpoint, trained again now) are hidden.
        self._writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step > 0 else None)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._writer is None:
            self.start_at(0)
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbLogger:
    """A Weights & Biases run in offline mode under `log_dir/wandb` (no network, no account).

    `wandb sync DIR/wandb/offline-run-*` uploads it later.
    """

    def __init__(
        self, *, log_dir: str | Path, project: str = "tunegen", name: str | None = None
    ) -> None:
        self._wandb = _require("wandb")
        self.log_dir = Path(log_dir)
        self.project, self.name = project, name
        self._run: Any = None

    def start_at(self, step: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(
            mode="offline",
            dir=str(self.log_dir),
            project=self.project,
            name=self.name,
            settings=self._wandb.Settings(silent=True),  # the run's summary names the dir
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._run is None:
            self.start_at(0)
        self._run.log(_finite(metrics), step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class MLflowLogger:
    """An MLflow run in a local file store at `log_dir` (`mlflow ui --backend-store-uri DIR`)."""

    def __init__(
        self, *, log_dir: str | Path, experiment: str = "tunegen", run_name: str | None = None
    ) -> None:
        self._mlflow = _require("mlflow")
        self.log_dir = Path(log_dir).resolve()
        self.experiment, self.run_name = experiment, run_name
        self._client: Any = None
        self._run_id: str | None = None

    def start_at(self, step: int) -> None:
        # MLflow 3 keeps the file store behind this switch (it prefers a database server);
        # a file store needs nothing but the run dir, which is what a recipe's run wants.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = self._mlflow.tracking.MlflowClient(tracking_uri=self.log_dir.as_uri())
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
        self._client = client
        self._run_id = client.create_run(experiment_id, run_name=self.run_name).info.run_id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._client is None:
            self.start_at(0)
        for name, value in _finite(metrics).items():
            self._client.log_metric(self._run_id, name, value, step=step)

    def close(self) -> None:
        if self._client is not None:
            self._client.set_terminated(self._run_id)
            self._client = None


BACKENDS: dict[str, type] = {
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
    "mlflow": MLflowLogger,
}
"""Spec name -> backend class (the config's `_component_`)."""


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """W&B and MLflow reject NaN/inf in places; such values stay in metrics.jsonl only."""
    return {name: float(v) for name, v in metrics.items() if math.isfinite(float(v))}
