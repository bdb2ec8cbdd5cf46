"""Where a task's dataset is: ``data.dataset`` under the data folder, or the built-in sample."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg.data.layouts import detect_layout
from medseg.data.nuclei import prepare_nuclei_sample
from medseg.data.sample import prepare_lits_sample
from medseg.errors import MedsegError, no_folder

logger = logging.getLogger("medseg")


def locate_dataset(cfg: Any, data_dir: Path, explicit: bool) -> Path:
    """The dataset folder, or the built-in sample when the task allows it and no dataset is there.

    Args:
        cfg: the task config (``data.dataset``, ``data.sample``).
        data_dir: the folder holding the datasets (a relative ``data.dataset`` is taken under it).
        explicit: ``data_dir`` was given by the user (``--data-dir``): it must exist.
    """
    if explicit and not data_dir.is_dir():
        raise no_folder(data_dir, f"--data-dir {data_dir}", "the folder holding the datasets, or a dataset folder")
    root = Path(cfg.data.dataset)
    root = root if root.is_absolute() else data_dir / root
    if cfg.data.dataset and root.exists():
        return root
    if explicit and _is_dataset(data_dir):  # --data-dir names the dataset folder itself, not the folder holding it
        logger.info("--data-dir %s holds a dataset itself: using it", data_dir)
        return data_dir
    if cfg.data.sample == "lits117":
        sample = prepare_lits_sample(data_dir)
        where = f"no dataset at {root}" if cfg.data.dataset else "no dataset configured"
        logger.info("%s: using the built-in LiTS sample (case 117, 128^3 CT crop) at %s", where, sample)
        return sample
    if cfg.data.sample == "dsb2018_nuclei":
        sample = prepare_nuclei_sample(data_dir)
        logger.info("no dataset at %s: using the built-in nuclei sample (DSB 2018, 512x512) at %s", root, sample)
        return sample
    raise MedsegError(f"dataset folder {root} does not exist: put the dataset there or pass --data-dir")


def _is_dataset(folder: Path) -> bool:
    """``folder`` has a layout of its own (``dataset.json``, or ``images/`` + ``labels/``)."""
    try:
        detect_layout(folder)
    except MedsegError:
        return False
    return True
