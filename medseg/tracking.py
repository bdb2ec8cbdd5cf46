"""MLflow tracking: one named run per training, SQLite in the working directory unless
``MLFLOW_TRACKING_URI`` says otherwise; MONAI's ``MLFlowHandler`` logs the per-step and per-epoch values."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from monai.handlers import MLFlowHandler, from_engine

from medseg.config import flatten
from medseg.errors import MedsegError

logger = logging.getLogger("medseg.tracking")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker:
    """A named MLflow run for one training run.

    Args:
        cfg: resolved task config (logged as flattened params).
        run_name: unique name, so MONAI's handlers attach to this run and no other.
    """

    def __init__(self, cfg: dict[str, Any], run_name: str) -> None:
        self.uri = tracking_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            raise MedsegError(
                f"MLFLOW_TRACKING_URI={self.uri!r}: file stores are not supported; use sqlite:///PATH/mlflow.db or http://HOST:PORT"
            )
        self.run_name = run_name
        self.experiment = cfg["tracking"]["experiment"]
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:///"):
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
                exp_id = self.client.create_experiment(self.experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            tags = {"task": cfg["task"], "network": cfg["network"]["name"]}
            self.run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
        except Exception as err:  # MLflow raises many types for an unreachable or broken store
            raise MedsegError(f"MLflow tracking store {self.uri} is not usable ({type(err).__name__}: {err})") from err
        self.run_id = self.run.info.run_id
        params = flatten(cfg)
        items = list(params.items())
        for start in range(0, len(items), 90):
            batch = [mlflow.entities.Param(k, v[:6000]) for k, v in items[start : start + 90]]
            self.client.log_batch(self.run_id, params=batch)
        logger.info("MLflow run '%s' (%s) in experiment '%s' at %s", run_name, self.run_id, self.experiment, self.uri)

    def handlers(self, trainer_epoch: Any) -> tuple[list, list]:
        """MONAI handlers for the trainer (loss per iteration) and the evaluator (metrics per epoch)."""
        common = {"tracking_uri": self.uri, "experiment_name": self.experiment, "run_name": self.run_name}
        train = MLFlowHandler(
            **common, iteration_log=True, epoch_log=False, tag_name="train_loss",
            output_transform=from_engine(["loss"], first=True),
        )
        val = MLFlowHandler(
            **common, iteration_log=False, epoch_log=True, global_epoch_transform=trainer_epoch,
        )
        return [train], [val]

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
