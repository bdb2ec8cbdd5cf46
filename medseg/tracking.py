"""MLflow tracking that never costs a training run.

One named MLflow run per training run: SQLite (``mlflow.db`` in the working directory) by default,
``MLFLOW_TRACKING_URI`` for another store or a tracking server. MONAI's ``MLFlowHandler`` logs the loss
and learning rate per step and the validation metrics per epoch; medseg logs the resolved config,
versions, git commit, dataset fingerprint, system information, figures, metrics files and the bundle.

Outages: an unreachable server at the start stops the run with one line (or, with
``--tracking-optional``, training goes on without tracking and says so). If the server goes away
mid-run, every failed call is recorded in ``<run>/mlflow_unlogged.jsonl`` and training continues;
the values themselves are all in the run directory (``history.json``, ``metrics.json``).

In MLflow's own vocabulary: the training and validation sets are dataset inputs (name, split digest,
profile), the trained network is a logged ``pyfunc`` model holding the bundle, the run's description is
its metrics table and data/network summary, and CPU/memory/GPU are sampled by MLflow's system-metrics
monitor. Several processes may share one SQLite store: its schema is created under a file lock and
"database is locked" is retried with backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import subprocess
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from filelock import FileLock
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from monai.handlers import MLFlowHandler, from_engine

from medseg import __version__
from medseg.bundle import versions as bundle_versions
from medseg.config import flatten
from medseg.data.labelmaps import case_name
from medseg.errors import MedsegError
from medseg.evaluation.metrics import distance_unit
import monai
import torch
import nibabel as nib
import numpy as np
import pandas as pd
from medseg.networks import describe

logger = logging.getLogger("medseg.tracking")

# fail in seconds, not after MLflow's default minutes of retries, when the server is down
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in train.log

# MLflow 3's UI: "custom_model_development" is the model-training view (runs, metrics, models), not GenAI's
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# after SQLite's own 5 s busy wait; jittered so two writers do not retry in step (about 25 s in all)
LOCKED_RETRY_DELAYS = (0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)


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


def _locked(err: BaseException) -> bool:
    return "database is locked" in str(err) or "database table is locked" in str(err)


def retry_locked(call: Callable[[], Any]) -> Any:
    """``call()``, retried with backoff while SQLite answers "database is locked" (another process writes)."""
    for delay in (*LOCKED_RETRY_DELAYS, None):
        try:
            return call()
        except Exception as err:  # SQLAlchemy's OperationalError, wrapped by MLflow in MlflowException
            if delay is None or not _locked(err):
                raise
            time.sleep(delay * random.uniform(0.5, 1.5))
    return None  # not reached


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<db>.lock`` beside a SQLite store: MLflow creates and migrates its schema without a lock of its
    own, so two processes opening a new store at once fail (``table ... already exists``)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=600):
        yield


def git_commit() -> str:
    """The medseg checkout's commit, or "unknown" when not installed from git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def system_info() -> dict[str, str]:

    return {
        "medseg.version": __version__, "monai.version": monai.__version__, "torch.version": torch.__version__,
        "python.version": platform.python_version(), "medseg.git_commit": git_commit(),
        "system.platform": platform.platform(), "system.cpu_count": str(os.cpu_count()),
        "system.torch_threads": str(torch.get_num_threads()),
        "system.device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def _case_name(case: Any) -> str:
    """A case's name (its image file's name without suffix): never a patient identifier from a header."""
    name = getattr(case, "name", None)  # a medseg.data.case.Case; a MONAI dict is named as Case names it
    return name if isinstance(name, str) else case_name(Path(_image_path(case)))


def _image_path(case: Any) -> str:
    image = case.item()["image"] if hasattr(case, "item") else case["image"]
    return str(image[0] if isinstance(image, (list, tuple)) else image)


def split_digest(files: list) -> str:
    """12 hex digits of the SHA-1 of the case names, in order: the same cases give the same digest."""
    return hashlib.sha1(",".join(_case_name(c) for c in files).encode()).hexdigest()[:12]


def dataset_profile(files: list, max_intensity_cases: int = 2) -> dict[str, Any]:
    """Case count, median voxel spacing (headers) and intensity percentiles of a few cases (NIfTI only)."""

    spacings, values = [], []
    for i, case in enumerate(files):
        try:
            img = nib.load(_image_path(case))
        except Exception:  # not NIfTI (a DICOM folder, NRRD): counted, not summarised
            continue
        spacings.append([float(v) for v in img.header.get_zooms()[:3]])
        if i < max_intensity_cases:
            values.append(np.asarray(img.dataobj, dtype=np.float32).ravel()[::7])
    out: dict[str, Any] = {"cases": len(files)}
    if spacings:
        out["median_spacing_mm"] = [round(float(v), 3) for v in np.median(np.array(spacings), axis=0)]
    if values:
        out["intensity_p0.5_p50_p99.5"] = [round(float(v), 1) for v in np.percentile(np.concatenate(values), [0.5, 50, 99.5])]
    return out


def dataset_fingerprint(train_files: list, val_files: list) -> dict[str, str]:
    """Case counts, the split's hashes, spacing from the headers, and intensity percentiles of a few cases."""
    train, val = dataset_profile(train_files), dataset_profile(val_files, max_intensity_cases=0)
    ids = ",".join(_case_name(c) for c in train_files) + "|" + ",".join(_case_name(c) for c in val_files)
    out = {"data.n_train": str(len(train_files)), "data.n_val": str(len(val_files)),
           "data.split_sha1": hashlib.sha1(ids.encode()).hexdigest()[:12],
           "data.train_sha1": split_digest(train_files), "data.val_sha1": split_digest(val_files)}
    spacing = train.get("median_spacing_mm") or val.get("median_spacing_mm")
    if spacing:
        out["data.median_spacing_mm"] = str(spacing)
    if "intensity_p0.5_p50_p99.5" in train:
        out["data.intensity_p0.5_p50_p99.5"] = str(train["intensity_p0.5_p50_p99.5"])
    return out


class CaseSet(MetaDataset):
    """A training or validation set as an MLflow dataset: no data, only its name, digest, folder and profile."""

    def __init__(self, source_dir: Path, name: str, digest: str, profile: dict[str, Any]) -> None:
        self._profile = profile
        super().__init__(LocalArtifactDatasetSource(str(source_dir)), name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def dataset_root(files: list) -> Path:
    """The folder that holds every case's files (an MSD folder above imagesTr/labelsTr)."""
    paths = []
    for case in files:
        item = case.item() if hasattr(case, "item") else case
        for key in ("image", "label"):
            value = item.get(key)
            paths += [str(Path(v).resolve()) for v in (value if isinstance(value, (list, tuple)) else [value]) if v]
    root = Path(os.path.commonpath(paths)) if paths else Path.cwd()
    return root if root.is_dir() else root.parent


def dataset_name(cfg: Any, root: Path | None = None) -> str:
    """The task's dataset (``data.dataset``), unless the cases came from another folder (``root``): the built-in
    sample used because that dataset is absent (``lits_sample``), or a dataset folder given as ``--data-dir``."""
    configured = str(cfg.data.dataset or cfg.data.sample or cfg.task)
    if root is not None and cfg.data.dataset and root.name and root.name != Path(str(cfg.data.dataset)).name:
        return root.name
    return configured


def markdown_summary(cfg: Any, fingerprint: dict[str, str], summary: dict[str, dict[str, float]] | None = None,
                     bundle_dir: Path | None = None) -> str:
    """The run's description: data, network, training, and (once evaluated) the final metrics table."""

    tr = cfg.training
    lines = [f"## {cfg.task}: {cfg.description or cfg.task}", "",
             f"**Data**: `{fingerprint.get('data.name') or dataset_name(cfg)}`, {fingerprint.get('data.n_train', '?')} training / "
             f"{fingerprint.get('data.n_val', '?')} validation cases (split `{fingerprint.get('data.split_sha1', '?')}`),"
             f" median spacing {fingerprint.get('data.median_spacing_mm', 'n/a')} mm, "
             f"{cfg.data.modality}; labels {', '.join(f'{v} = {k}' for k, v in cfg.data.labels.items())}.",
             "", f"**Network**: {describe(cfg.network)}.", "",
             f"**Training**: {tr.epochs} epochs x {tr.iterations_per_epoch} iterations, batch {tr.batch_size}, "
             f"patches {tr.patch_size}, {tr.optimizer} (lr {tr.learning_rate}), loss {tr.loss}."]
    if summary:
        unit = distance_unit(cfg)  # px or µm for a picture task
        lines += ["", f"**Final validation metrics** (original grid, distances in {unit})", "",
                  f"| class | Dice | HD95 ({unit}) | ASSD ({unit}) | cases |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {e['dice']:.3f} | {e['hd95_mm']:.2f} | {e['assd_mm']:.2f} | {int(e['cases'])} |"
                  for c, e in summary.items()]
    if bundle_dir is not None:
        lines += ["", f"**Bundle**: `{bundle_dir}` (logged model `model`)."]
    return "\n".join(lines) + "\n"


MODEL_CODE = """# MLflow models-from-code entry (no pickled Python object in the model): medseg.predict on the bundle.
import mlflow
from medseg.workflows.mlflow_model import BundleModel

mlflow.models.set_model(BundleModel())
"""


def _model_requirements() -> list[str]:
    """medseg's own install requirements (the model's code is shipped with it: ``code_paths``)."""
    try:
        return [r for r in requires("medseg") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        return ["torch", "monai", "mlflow", "nibabel", "numpy", "scipy", "pyyaml"]


class Tracker:
    """A named MLflow run for one training run; every call is guarded so tracking can fail without training failing.

    Args:
        cfg: resolved task config (logged as flattened params).
        run_name: unique name, so MONAI's handlers attach to this run and no other.
        run_dir: where failed calls are recorded (``mlflow_unlogged.jsonl``).
        optional: with an unreachable server, train without tracking instead of stopping.
        run_id: continue this existing MLflow run (``--resume``) instead of creating one.
        command: what made the run, for ``mlflow.source.name`` (default ``medseg.train <task>``).
    """

    def __init__(
        self, cfg: dict[str, Any], run_name: str, run_dir: Path, optional: bool = False, run_id: str | None = None,
        command: str | None = None,
    ) -> None:
        self.uri = tracking_uri()
        _check_uri(self.uri)
        self.cfg = cfg
        self.run_name, self.run_dir = run_name, run_dir
        self.experiment_name = cfg.tracking.experiment
        self.unlogged = run_dir / "mlflow_unlogged.jsonl"
        self.failures = 0
        self.active = True
        self.fingerprint: dict[str, str] = {}
        self.datasets: dict[str, CaseSet] = {}
        self.model_info: Any = None
        self.logged: dict[str, int] = {}  # see below (--resume)
        self.monitor: SystemMetricsMonitor | None = None
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
        mlflow.set_tracking_uri(self.uri)  # for MLflow's fluent calls: the logged model, system metrics
        try:
            with store_lock(self.uri):  # opening the store creates (or migrates) a new store's schema
                self.client = retry_locked(lambda: MlflowClient(tracking_uri=self.uri))
                exp = retry_locked(self._experiment)
            self.experiment = exp
            info = system_info()
            tags = {"task": cfg.task, "network": cfg.network.name, "fold": "none", **info,
                    "mlflow.source.name": command or f"medseg.train {cfg.task}", "mlflow.source.type": "LOCAL"}
            if info["medseg.git_commit"] != "unknown":
                tags["mlflow.source.git.commit"] = info["medseg.git_commit"]
            if run_id:  # --resume: go on in the run the interrupted training started
                self.run = retry_locked(lambda: self.client.get_run(run_id))
                retry_locked(lambda: self.client.update_run(run_id, status="RUNNING"))
            else:
                self.run = retry_locked(lambda: self.client.create_run(exp.experiment_id, run_name=run_name, tags=tags))
        except MedsegError:
            raise
        except Exception as err:  # MLflow raises many types for a broken or unreachable store
            first = (str(err).strip().splitlines() or [""])[0][:300]  # SQLAlchemy appends the SQL and a link
            raise MedsegError(f"MLflow tracking store {self.uri} is not usable ({type(err).__name__}: {first}); point "
                              "MLFLOW_TRACKING_URI at an MLflow store (sqlite:///PATH/mlflow.db, a new file is "
                              "created) or a tracking server") from err
        self.run_id = self.run.info.run_id
        #: --resume: each metric's last logged step; the steps a killed run logged after its last checkpoint are
        #: trained again and not logged twice (MLflow keeps every point: its charts would show both)
        self.logged = (self.guard("metric steps", self._logged_steps) or {}) if run_id else {}
        self.log_params(flatten(cfg))
        logger.info("MLflow run '%s' (%s) in experiment '%s' at %s", run_name, self.run_id, self.experiment_name, self.uri)
        if self.uri.startswith(("http://", "https://")):  # the UI's model-training view (MLflow 3: workflowType)
            logger.info("MLflow run page: %s/#/experiments/%s/runs/%s?workflowType=machine_learning",
                        self.uri.rstrip("/"), self.experiment.experiment_id, self.run_id)
        if cfg.tracking.system_metrics:  # CPU, memory, disk, network; GPU through pynvml
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop lines in the log
            self.monitor = self.guard("system metrics", lambda: SystemMetricsMonitor(
                self.run_id, resume_logging=run_id is not None, tracking_uri=self.uri))
            if self.monitor is not None:
                self.monitor.start()

    def _experiment(self) -> Any:
        """The experiment, created (in the model-training view) if missing; refuses a deleted one."""
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
            try:
                self.client.create_experiment(self.experiment_name, artifact_location=location, tags=EXPERIMENT_KIND)
            except MlflowException as err:  # another process created it first (a server has no file lock)
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            exp = self.client.get_experiment_by_name(self.experiment_name)
        elif "mlflow.experimentKind" not in exp.tags:
            # an experiment an older medseg made: give it the training view too (a kind someone chose is kept)
            self.client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp

    # ------------------------------------------------------------------ guarded calls
    def guard(self, what: str, call: Callable[[], Any], payload: Any = None) -> Any:
        """Run one MLflow call (retried while SQLite is locked by another writer); on failure record it and
        carry on (the first failure is logged)."""
        if not self.active:
            return None
        try:
            return retry_locked(call)
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

    def _logged_steps(self) -> dict[str, int]:
        keys = [k for k in self.client.get_run(self.run_id).data.metrics if not k.startswith("system/")]
        return {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1) for k in keys}

    def not_logged(self, metrics: dict[str, Any], step: int | None) -> dict[str, Any]:
        """``metrics`` without those already logged at ``step`` or later (by the killed run a resume continues)."""
        if not self.logged or step is None:
            return metrics
        return {k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        metrics = self.not_logged(metrics, step)
        if not metrics:
            return
        batch = [mlflow.entities.Metric(k, float(v), int(time.time() * 1000), step) for k, v in metrics.items()]
        self.guard("metrics", lambda: self.client.log_batch(self.run_id, metrics=batch), metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.guard("artifact", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path), str(path))
        else:
            self.guard("artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), str(path))

    # ------------------------------------------------------------------ MLflow's vocabulary
    def log_datasets(self, train_files: list, val_files: list) -> dict[str, str]:
        """The split's fingerprint as params, and the training and validation sets as dataset inputs: name = the
        task's dataset, digest = the part's split hash, source = the dataset folder, profile = case count, spacing,
        intensity percentiles (no case names, no header fields)."""
        self.fingerprint = dataset_fingerprint(train_files, val_files)
        if train_files or val_files:  # the folder the cases came from: the sample when the dataset is absent
            self.fingerprint["data.name"] = dataset_name(self.cfg, dataset_root(list(train_files) + list(val_files)))
        self.log_params(self.fingerprint)
        common = {"modality": self.cfg.data.modality, "labels": dict(self.cfg.data.labels)}
        inputs = []
        for context, files in (("training", train_files), ("validation", val_files)):
            if not files:
                continue
            profile = {**dataset_profile(files, max_intensity_cases=2 if context == "training" else 1), **common}
            root = dataset_root(files)
            ds = CaseSet(root, dataset_name(self.cfg, root), split_digest(files), profile)
            self.datasets[context] = ds
            inputs.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]))
        self.guard("datasets", lambda: self.client.log_inputs(self.run_id, datasets=inputs),
                   {d: {"name": ds.name, "digest": ds.digest} for d, ds in self.datasets.items()})
        return self.fingerprint

    def describe(self, summary: dict[str, dict[str, float]] | None = None, bundle_dir: Path | None = None) -> None:
        """The run's description (``mlflow.note.content``, Markdown): data, network, training, final metrics."""
        text = markdown_summary(self.cfg, self.fingerprint, summary,
                                bundle_versions.resolve(Path(bundle_dir)) if bundle_dir is not None else None)
        self.guard("description", lambda: self.client.set_tag(self.run_id, "mlflow.note.content", text), text)

    def log_model(self, bundle_dir: Path | None, summary: dict[str, dict[str, float]]) -> Any:
        """The bundle as the run's logged MLflow model (``pyfunc``: :class:`medseg.workflows.mlflow_model.BundleModel`,
        with a signature), and the
        final validation metrics linked to that model and to the validation dataset.

        pyfunc rather than ``mlflow.pytorch``: a bare network takes resampled, normalised patches and answers
        logits; the bundle's prediction takes an image file and writes its mask in the image's own geometry,
        which is what a user of the model wants (and what ``medseg.predict`` does)."""
        metrics = {f"final_{c}_{m}": float(v) for c, e in summary.items() for m, v in e.items()
                   if not m.endswith(("_std", "_median"))}
        self.stop_system_metrics()  # training and evaluation are over
        if bundle_dir is not None:
            self.model_info = self.guard("model", lambda: self._log_pyfunc(bundle_dir), str(bundle_dir))
        model_id = getattr(self.model_info, "model_id", None)
        val = self.datasets.get("validation")
        stamp = int(time.time() * 1000)
        batch = [mlflow.entities.Metric(k, v, stamp, 0, model_id=model_id, dataset_name=val.name if val else None,
                                        dataset_digest=val.digest if val else None) for k, v in metrics.items()]
        self.guard("metrics", lambda: self.client.log_batch(self.run_id, metrics=batch), metrics)
        return self.model_info

    def _log_pyfunc(self, bundle_dir: Path) -> Any:
        example_in = {"image": ["case_000.nii.gz"]}
        example_out = {"image": ["case_000.nii.gz"], "mask": ["predictions/case_000_seg.nii.gz"]}

        signature = infer_signature(pd.DataFrame(example_in), pd.DataFrame(example_out),
                                    params={"output_dir": "predictions"})
        version_dir = bundle_versions.resolve(Path(bundle_dir))
        # created here so that it belongs to the run's experiment (Model.log alone puts it in the active one)
        model = self.client.create_logged_model(self.experiment.experiment_id, name="model", source_run_id=self.run_id,
                                                tags={"task": self.cfg.task, "medseg.bundle": version_dir.name},
                                                model_type="MONAI bundle")
        with tempfile.TemporaryDirectory(prefix="medseg-model-") as tmp, warnings.catch_warnings(record=True):
            code = Path(tmp) / "medseg_bundle_model.py"  # MLflow's advice (type hints, an input example) not shown:
            code.write_text(MODEL_CODE)  # an example would be run at logging time, on a file that is not there
            return Model.log(
                artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=self.run_id, python_model=str(code),
                artifacts={"bundle": str(version_dir.resolve())}, signature=signature, model_id=model.model_id,
                pip_requirements=_model_requirements(),
                metadata={"medseg.bundle": version_dir.name, "medseg.version": __version__},
            )

    def register(self, name: str, metrics: dict[str, float]) -> Any:
        """Register the run's logged model (else its ``bundle`` artifact) as a new version of model ``name``,
        tagged with ``metrics``."""
        def _register():
            try:
                self.client.get_registered_model(name)
            except Exception:  # not registered yet
                self.client.create_registered_model(name, description=f"medseg bundles for task {name}")
            tags = {k: f"{v:.4f}" for k, v in metrics.items()}
            if self.model_info is not None:
                return self.client.create_model_version(name, source=self.model_info.model_uri, run_id=self.run_id,
                                                        tags=tags, model_id=self.model_info.model_id)
            source = f"{self.run.info.artifact_uri.rstrip('/')}/bundle"
            return self.client.create_model_version(name, source=source, run_id=self.run_id, tags=tags)

        version = self.guard("register", _register, name)
        if version is not None:
            logger.info("registered model '%s' version %s", name, version.version)
        return version

    def stop_system_metrics(self) -> None:
        if self.monitor is not None:  # flushes its last samples
            self.guard("system metrics", self.monitor.finish)
            self.monitor = None

    def finish(self, status: str = "FINISHED") -> None:
        self.stop_system_metrics()
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
        metrics = self.tracker.not_logged(metrics, step)
        if not metrics:
            return
        self.tracker.guard("metrics", lambda: super(_GuardedMLFlowHandler, self)._log_metrics(metrics, step),
                           {"step": step, **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}})

    def _log_params(self, params: dict[str, Any]) -> None:
        self.tracker.guard("params", lambda: super(_GuardedMLFlowHandler, self)._log_params(params), params)

    def complete(self) -> None:
        self.tracker.guard("handler complete", lambda: super(_GuardedMLFlowHandler, self).complete())
