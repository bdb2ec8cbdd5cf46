"""Checks on an output folder before any work: every command that writes a folder of results refuses in one line
an ``--output`` it could not write at the end."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.data.images import check_can_write
from medseg.errors import MedsegError


def check_output_folder(output: Path, what: str) -> None:
    """One :class:`MedsegError` line when ``output`` cannot become a writable folder: it or a folder above it is a
    file, or the nearest existing folder (itself or above it) is not writable. ``what``: what the folder is for
    ("the masks"), named in the message."""
    for folder in (output, *output.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise MedsegError(f"--output {output}: {folder} is a file, not a folder; give a folder for {what}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise MedsegError(f"--output {output}: folder {folder} is not writable; give a folder you can write to")
        check_can_write(folder, f"--output {output}")  # what the permission bits do not tell (root, read-only mounts)
        return
