"""The integrity check of a dataset as plain functions (the body of ``python -m medseg.data check``).

Every case: files readable, image channels and label on the same grid, label values the task declares,
empty labels, NaN/inf in floating-point images; then a summary of dimensions, orientations, spacing,
shapes and label values. Geometry is read from headers.

Example (a notebook):
    >>> from medseg.workflows import check
    >>> report = check.run(check.open_dataset("data/Task03_Liver"))
    >>> report.bad, report.summary[:2]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.config import TaskConfig, load_config
from medseg.data.case import Case, items
from medseg.data.check import CaseResult, check_case, summarise
from medseg.data.labelmaps import detect_255_label_map
from medseg.data.layouts import all_cases, detect_layout
from medseg.data.locate import locate_dataset
from medseg.data.msd import read_manifest
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text


@dataclass
class Dataset:
    """The cases to check, where they are, and the label values they should hold (None: any)."""

    root: Path
    layout: str
    cases: list[Case]
    expected: set[int] | None
    label_map: dict[int, int] = field(default_factory=dict)  # stored value -> label value (0/255 masks)


@dataclass
class CheckReport:
    root: Path
    layout: str
    results: list[CaseResult]
    summary: list[str]  # lines: the summary, and the label mapping when there is one

    @property
    def bad(self) -> list[str]:
        """The cases with a problem."""
        return [r.case for r in self.results if r.problems]

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "layout": self.layout, "summary": self.summary, "bad_cases": self.bad,
                "cases": [{"case": r.case, "problems": r.problems, "shape": list(r.shape), "spacing": list(r.spacing),
                           "orientation": r.axcodes, "label_values": r.label_values} for r in self.results]}


def _path_config(root: Path, layout: str | None) -> tuple[TaskConfig, set[int] | None]:
    """A minimal config for a dataset given as a path (the schema defaults with its layout and labels);
    expected labels from its dataset.json when it has one."""
    layout = layout or detect_layout(root)
    expected: set[int] | None = None
    labels: dict[str, int] = {"background": 0}
    if layout in ("msd", "nnunet"):
        declared = read_manifest(root / "dataset.json").get("labels")
        if isinstance(declared, dict):
            try:
                if layout == "msd":
                    labels = {str(name): int(value) for value, name in declared.items()}
                else:
                    labels = {str(name): int(value) for name, value in declared.items() if not isinstance(value, list)}
            except (TypeError, ValueError) as err:
                raise MedsegError(f"{root / 'dataset.json'}: 'labels' must pair names with integer values ({err})") from err
            expected = set(labels.values())
    stored = {"task": root.name or "dataset", "data": {"layout": layout, "labels": labels, "skip_bad": True}}
    return TaskConfig.from_dict(stored, source=f"{root} (layout {layout})"), expected


def open_dataset(target: str | Path, *, data_dir: str | Path | None = None, layout: str | None = None,
                 overrides: Sequence[str] = ()) -> Dataset:
    """The cases of ``target``: a dataset folder / CSV file (``layout`` detected unless given), or a task name
    or pipeline YAML (its dataset under ``data_dir``, default ``./data``, with ``overrides`` applied)."""
    path = Path(target)
    if path.exists() and path.suffix.lower() not in (".yaml", ".yml"):
        cfg, expected = _path_config(path, layout)
        root = path
    else:
        cfg = load_config(str(target), list(overrides) + ([f"data.layout={layout}"] if layout else []))
        root = locate_dataset(cfg, Path(data_dir or "data"), explicit=data_dir is not None)
        expected = set(cfg.data.labels.values())
    cases = all_cases(cfg, root)
    label_map = cfg.effective_label_map() or detect_255_label_map(cfg.data.labels, cases)  # 0/255 masks: {255: 1}
    return Dataset(root, cfg.data.layout, cases, expected, label_map)


def run(dataset: Dataset, on_case: Callable[[CaseResult], None] | None = None) -> CheckReport:
    """Check every case of ``dataset`` (``on_case`` is called after each); the report lists the problems."""
    results = []
    for case in items(dataset.cases):
        result = check_case(case, dataset.expected, dataset.label_map)
        results.append(result)
        if on_case is not None:
            on_case(result)
    lines = summarise(results)
    if dataset.label_map:
        lines.append(f"label values mapped on reading: {dataset.label_map}")
    return CheckReport(dataset.root, dataset.layout, results, lines)


def write_json(report: CheckReport, path: str | Path) -> Path:
    """The report as JSON at ``path`` (written atomically)."""
    atomic_write_text(Path(path), json.dumps(report.to_dict(), indent=1))
    return Path(path)
