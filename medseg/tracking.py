"""MLflow tracking that never costs a training run.

One named MLflow run per training run: SQLite (``mlflow.db`` in the working directory) by default,
``MLFLOW_TRACKING_URI`` for another store or a tracking server. MONAI's ``MLFlowHandler`` logs the loss
and learning rate per step and the validation metrics per epoch; medseg logs the resolved config,
versions, git commit, dataset fingerprint, system information, figures, metrics files and the bundle.

Outages: an unreachable server at the start stops the run with one line (or, with
``--tracking-optional``, training goes on without tracking and says so). If the server goes away
mid-run, every failed call is recorded in ``<run>/mlflow_unlogged.jsonl`` and training continues;
the values themselves are all in the run directory (``history.json``, ``metrics.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from monai.handlers import MLFlowHandler, from_engine

from medseg import __version__
from medseg.config import flatten
from medseg.errors import MedsegError

logger = logging.getLogger("medseg.tracking")

# fail in seconds, not after MLflow's default minutes of retries, when the server is down
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _check_uri(uri: str) -> None:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in {"sqlite", "http", "https", "postgresql", "mysql", "databricks"}:
        raise MedsegError(
            f"MLFLOW_TRACKING_URI={uri!r} is not a usable tracking store; use sqlite:///PATH/mlflow.db "
            "or http://HOST:PORT (file stores are not supported)"
        )


def _reachable(uri: str) -> str | None:
    """None if an HTTP tracking server answers its health check, else the reason."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            return None if response.status == 200 else f"health check answered {response.status}"
    except Exception as err:  # URLError, timeouts, connection resets
        return str(getattr(err, "reason", err))


def git_commit() -> str:
    """The medseg checkout's commit, or "unknown" when not installed from git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def system_info() -> dict[str, str]:
    import monai
    import torch

    return {
        "medseg.version": __version__, "monai.version": monai.__version__, "torch.version": torch.__version__,
        "python.version": platform.python_version(), "medseg.git_commit": git_commit(),
        "system.platform": platform.platform(), "system.cpu_count": str(os.cpu_count()),
        "system.torch_threads": str(torch.get_num_threads()),
        "system.device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def dataset_fingerprint(train_files: list[dict], val_files: list[dict], max_intensity_cases: int = 3) -> dict[str, str]:
    """Case counts, the split's hash, spacing from the headers, and intensity percentiles of a few cases."""
    import nibabel as nib
    import numpy as np

    from medseg.engine.inference import case_id

    spacings, values = [], []
    for i, case in enumerate(train_files + val_files):
        try:
            img = nib.load(case["image"])
        except Exception:  # not NIfTI (a DICOM folder, NRRD): counted, not summarised
            continue
        spacings.append([float(v) for v in img.header.get_zooms()[:3]])
        if i < max_intensity_cases:
            values.append(np.asarray(img.dataobj, dtype=np.float32).ravel()[::7])
    ids = ",".join(case_id(c) for c in train_files) + "|" + ",".join(case_id(c) for c in val_files)
    out = {"data.n_train": str(len(train_files)), "data.n_val": str(len(val_files)),
           "data.split_sha1": hashlib.sha1(ids.encode()).hexdigest()[:12]}
    if spacings:
        out["data.median_spacing_mm"] = str([round(float(v), 3) for v in np.median(np.array(spacings), axis=0)])
    if values:
        p = np.percentile(np.concatenate(values), [0.5, 50, 99.5])
        out["data.intensity_p0.5_p50_p99.5"] = str([round(float(v), 1) for v in p])
    return out


class Tracker:
    """A named MLflow run for one training run; every call is guarded so tracking can fail without training failing.

    Args:
        cfg: resolved task config (logged as flattened params).
        run_name: unique name, so MONAI's handlers attach to this run and no other.
        run_dir: where failed calls are recorded (``mlflow_unlogged.jsonl``).
        optional: with an unreachable server, train without tracking instead of stopping.
        run_id: continue this existing MLflow run (``--resume``) instead of creating one.
    """

    def __init__(
        self, cfg: dict[str, Any], run_name: str, run_dir: Path, optional: bool = False, run_id: str | None = None
    ) -> None:
        self.uri = tracking_uri()
        _check_uri(self.uri)
        self.run_name, self.run_dir = run_name, run_dir
        self.experiment_name = cfg["tracking"]["experiment"]
        self.unlogged = run_dir / "mlflow_unlogged.jsonl"
        self.failures = 0
        self.active = True
        reason = _reachable(self.uri)
        if reason is not None:
            if not optional:
                raise MedsegError(
                    f"MLflow tracking server {self.uri} is unreachable ({reason}); start it, correct "
                    "MLFLOW_TRACKING_URI, or pass --tracking-optional to train without tracking"
                )
            logger.warning("MLflow tracking server %s is unreachable (%s): training WITHOUT tracking", self.uri, reason)
            self.active = False
            return
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None and exp.lifecycle_stage != "active":
                raise MedsegError(
                    f"MLflow experiment '{self.experiment_name}' is deleted in {self.uri}; restore it "
                    f"(mlflow experiments restore) or choose another with --set tracking.experiment=NAME"
                )
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:///"):
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
                self.client.create_experiment(self.experiment_name, artifact_location=location)
                exp = self.client.get_experiment_by_name(self.experiment_name)
            self.experiment = exp
            tags = {"task": cfg["task"], "network": cfg["network"]["name"], "fold": "none", **system_info()}
            if run_id:  # --resume: go on in the run the interrupted training started
                self.run = self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
            else:
                self.run = self.client.create_run(exp.experiment_id, run_name=run_name, tags=tags)
        except MedsegError:
            raise
        except Exception as err:  # MLflow raises many types for a broken or unreachable store
            raise MedsegError(f"MLflow tracking store {self.uri} is not usable ({type(err).__name__}: {err})") from err
        self.run_id = self.run.info.run_id
        self.log_params(flatten(cfg))
        logger.info("MLflow run '%s' (%s) in experiment '%s' at %s", run_name, self.run_id, self.experiment_name, self.uri)

    # ------------------------------------------------------------------ guarded calls
    def guard(self, what: str, call: Callable[[], Any], payload: Any = None) -> Any:
        """Run one MLflow call; on failure record it and carry on (the first failure is logged)."""
        if not self.active:
            return None
        try:
            return call()
        except Exception as err:  # any transport or server error: training must go on
            self.failures += 1
            if self.failures == 1:
                logger.warning("MLflow call failed (%s): training continues; what is not logged goes to %s",
                               str(err).splitlines()[0][:200], self.unlogged)
            entry = {"what": what, "payload": payload, "error": f"{type(err).__name__}: {str(err)[:200]}"}
            with open(self.unlogged, "a") as fh:
                fh.write(json.dumps(entry, default=str) + "\n")
            return None

    def log_params(self, params: dict[str, str]) -> None:
        items = list(params.items())
        for start in range(0, len(items), 90):
            batch = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in items[start:start + 90]]
            self.guard("params", lambda b=batch: self.client.log_batch(self.run_id, params=b), dict(items[start:start + 90]))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        batch = [mlflow.entities.Metric(k, float(v), int(time.time() * 1000), step) for k, v in metrics.items()]
        self.guard("metrics", lambda: self.client.log_batch(self.run_id, metrics=batch), metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.guard("artifact", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path), str(path))
        else:
            self.guard("artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), str(path))

    def register(self, name: str, metrics: dict[str, float]) -> Any:
        """Register the run's ``bundle`` artifact as a new version of model ``name``, tagged with ``metrics``."""
        def _register():
            try:
                self.client.get_registered_model(name)
            except Exception:  # not registered yet
                self.client.create_registered_model(name, description=f"medseg bundles for task {name}")
            source = f"{self.run.info.artifact_uri.rstrip('/')}/bundle"
            return self.client.create_model_version(name, source=source, run_id=self.run_id,
                                                    tags={k: f"{v:.4f}" for k, v in metrics.items()})

        version = self.guard("register", _register, name)
        if version is not None:
            logger.info("registered model '%s' version %s", name, version.version)
        return version

    def finish(self, status: str = "FINISHED") -> None:
        self.guard("finish", lambda: self.client.set_terminated(self.run_id, status=status), status)
        if self.failures:
            logger.warning("%d MLflow call(s) failed and were not logged; see %s (the values are in %s)",
                           self.failures, self.unlogged, self.run_dir)

    # ------------------------------------------------------------------ MONAI handlers
    def handlers(self, trainer_epoch: Any) -> tuple[list, list]:
        """MONAI handlers for the trainer (loss and lr per iteration) and the evaluator (metrics per epoch)."""
        if not self.active:
            return [], []
        common = {"tracking_uri": self.uri, "experiment_name": self.experiment_name, "run_name": self.run_name}
        train = _GuardedMLFlowHandler(self, **common, iteration_log=True, epoch_log=False, tag_name="train_loss",
                                      output_transform=from_engine(["loss"], first=True))
        val = _GuardedMLFlowHandler(self, **common, iteration_log=False, epoch_log=True,
                                    global_epoch_transform=trainer_epoch)
        return [train], [val]


class _GuardedMLFlowHandler(MLFlowHandler):
    """MONAI's MLFlowHandler, attached to medseg's run, with each call to the store guarded by the tracker."""

    def __init__(self, tracker: Tracker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tracker = tracker
        self.cur_run = tracker.run
        self.experiment = tracker.experiment

    def start(self, engine: Any) -> None:
        self.tracker.guard("handler start", lambda: super(_GuardedMLFlowHandler, self).start(engine))

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.tracker.guard("metrics", lambda: super(_GuardedMLFlowHandler, self)._log_metrics(metrics, step),
                           {"step": step, **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}})

    def _log_params(self, params: dict[str, Any]) -> None:
        self.tracker.guard("params", lambda: super(_GuardedMLFlowHandler, self)._log_params(params), params)

    def complete(self) -> None:
        self.tracker.guard("handler complete", lambda: super(_GuardedMLFlowHandler, self).complete())
