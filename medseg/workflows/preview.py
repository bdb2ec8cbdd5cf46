"""The augmentation preview of a task as a plain function (the body of ``python -m medseg.preview``).

Example (a notebook):
    >>> from medseg.workflows import preview
    >>> preview.run("liver", n=8, out="preview.png", overrides=["augmentation.elastic.prob=1"])
    PosixPath('preview.png')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.config import load_config
from medseg.data.case import items
from medseg.data.images import check_output_path
from medseg.data.layouts import load_dataset
from medseg.data.locate import locate_dataset
from medseg.errors import MedsegError
from medseg.evaluation.figures import write_preview
from medseg.transforms import fit_preprocessing
from medseg.workflows.logs import setup_logging


def run(task_or_yaml: str | Path, *, n: int = 8, out: str | Path | None = None, data_dir: str | Path | None = None,
        seed: int | None = None, overrides: Sequence[str] = ()) -> Path:
    """Write the grid of ``n`` training patches before and after augmentation (what training logs to MLflow).

    Args:
        task_or_yaml: a task name in pipelines/ or a YAML path.
        n: patches (columns), 1 to 64.
        out: the PNG to write (default ``<task>_augmentation_preview.png``).
        data_dir: the folder holding the datasets (default ``./data``; given, it must exist).
        seed: the sampler's and augmentation's seed (default ``training.seed``).
        overrides: ``key=value`` config overrides, as ``--set`` takes them.

    Returns the path written. Bad input raises :class:`medseg.errors.MedsegError` (one line).
    """
    if not 1 <= n <= 64:
        raise MedsegError(f"--n {n}: give between 1 and 64 patches")
    if out is not None and Path(out).suffix.lower() != ".png":
        raise MedsegError(f"--out {out}: the preview is a PNG; give a file name ending in .png")
    if out is not None:  # before the cases are read and preprocessed: a folder above it that is a file
        check_output_path(Path(out), "--out")
    cfg = load_config(str(task_or_yaml), list(overrides))
    setup_logging()
    root = locate_dataset(cfg, Path(data_dir or "data"), explicit=data_dir is not None)
    cases = items(load_dataset(cfg, root, cfg.training.seed)[0])
    cfg = fit_preprocessing(cfg, cases)
    path = Path(out) if out is not None else Path(f"{cfg.task}_augmentation_preview.png")
    return write_preview(cfg, cases, path, n=n, seed=cfg.training.seed if seed is None else seed)
