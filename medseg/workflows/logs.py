"""medseg's log: one console handler (whatever ``sys.stdout`` is now) and, per run, ``train.log``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record comes, so a replaced or captured stdout that has
    since been closed (a notebook cell, a test) is never written to."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(run_dir: Path | None = None) -> None:
    """INFO lines of the ``medseg`` loggers on the console, and in ``run_dir/train.log`` when given (the
    previous run's file is closed)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("medseg")
    root.setLevel(logging.INFO)
    root.propagate = False
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        console = _ConsoleHandler()
        console.setFormatter(fmt)
        root.addHandler(console)
    if run_dir is not None:
        for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(old)
            old.close()
        file_handler = logging.FileHandler(run_dir / "train.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
