"""Plan a dataset: ``python -m medseg.plan`` is this module's :func:`run`; :func:`planned_yaml` is what
``python -m medseg.train DATASET_DIR`` plans with before it trains.

Example (a notebook):
    >>> from medseg.workflows import plan
    >>> outcome = plan.run("data/lits_sample", modality="CT", budget_minutes=15)
    >>> outcome.plan.decisions["training.patch_size"]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medseg.config import PIPELINES_DIR
from medseg.errors import MedsegError
from medseg.plan import Plan, parse_labels, plan_dataset, write_plan
from medseg.plan.planner import task_name
from medseg.workflows.logs import setup_logging

logger = logging.getLogger("medseg.plan")


@dataclass(frozen=True)
class PlanOutcome:
    plan: Plan
    yaml: Path
    plan_json: Path
    fingerprint_json: Path


def is_dataset(arg: str | Path | None) -> bool:
    """A dataset folder or CSV rather than a task name or pipeline YAML."""
    if arg is None:
        return False
    path = Path(arg)
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")


def run(dataset: str | Path, *, modality: str | None = None, labels: str | dict[str, int] | None = None,
        budget_minutes: float = 15.0, device: str = "cpu", network: str = "resunet",
        out: str | Path | None = None) -> PlanOutcome:
    """Fingerprint ``dataset``, plan it on this machine for ``budget_minutes`` and write the commented pipeline
    YAML (default ``pipelines/<task>.yaml``) with ``<task>.plan.json`` and ``<task>.fingerprint.json`` beside it."""
    setup_logging()
    parsed = parse_labels(labels) if isinstance(labels, str) else labels
    check_out(out, Path(dataset))  # before minutes of reading and timing, not at the write after them
    plan = plan_dataset(Path(dataset), modality=modality, labels=parsed, budget_minutes=budget_minutes,
                        device=device, network=network)
    yaml_path = write_plan(plan, Path(out) if out else PIPELINES_DIR / f"{plan.task}.yaml")
    return PlanOutcome(plan, yaml_path, yaml_path.with_suffix(".plan.json"),
                       yaml_path.with_suffix(".fingerprint.json"))


def check_out(out: str | Path | None, dataset: Path) -> None:
    """One line, before any work, for an ``--out`` that cannot take the planned YAML: a folder, a name without
    ``.yaml`` (``plan.json`` and ``fingerprint.json`` are named after it), or a parent that is a file."""
    if out is None:
        return
    out = Path(out)
    example = f"e.g. --out {out / (task_name(dataset) + '.yaml') if out.is_dir() else out.with_suffix('.yaml')}"
    if out.is_dir():
        raise MedsegError(f"--out {out}: a folder; give the pipeline YAML file to write ({example})")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise MedsegError(f"--out {out}: not a .yaml file name; the pipeline YAML is written there and"
                          f" <name>.plan.json, <name>.fingerprint.json beside it ({example})")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise MedsegError(f"--out {out}: {parent} is a file, not a folder; give a YAML path in a folder")


def planned_yaml(dataset: str | Path, budget_minutes: float = 15.0, device: str = "cpu",
                 skip_bad: bool = False) -> PlanOutcome:
    """Plan a dataset for training: the YAML goes to ``runs/plans/<task>/<task>.yaml`` (pipelines/ is left alone);
    ``skip_bad`` (``--skip-bad``): cases training would refuse are left out of the plan too."""
    plan = plan_dataset(Path(dataset), budget_minutes=budget_minutes, device=device, skip_bad=skip_bad)
    out = write_plan(plan, Path("runs") / "plans" / plan.task / f"{plan.task}.yaml")
    logger.info("planned %s (plan %s): %s", dataset, plan.hash, out)
    return PlanOutcome(plan, out, out.with_suffix(".plan.json"), out.with_suffix(".fingerprint.json"))
