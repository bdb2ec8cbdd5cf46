"""What the benchmark scripts share: a mistake in their input stops with one line (exit code 2), not a traceback.

A script runs its ``main`` through :func:`run` (``medseg.errors.run_cli``: a ``MedsegError``, also one inside
MONAI's wrapping, is printed as ``medseg: error: ...``), and checks its path options first with :func:`need`,
so a wrong path is named before any work is done.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from medseg.errors import MedsegError


def need(path: Path | str | None, flag: str, kind: str = "file", hint: str = "") -> None:
    """One line unless ``path`` (the value of ``flag``) is an existing file (``kind="file"``) or folder
    (``kind="folder"``); nothing when ``path`` is None (the option was not given)."""
    if path is None:
        return
    p = Path(path)
    ok = p.is_file() if kind == "file" else p.is_dir()
    if not ok:
        found = "a folder" if p.is_dir() else "a file" if p.exists() else "not found"
        raise MedsegError(f"{flag} {path}: {found}, need an existing {kind}" + (f" ({hint})" if hint else ""))


def check_run(cmd: Sequence[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``; a non-zero exit is one line naming ``what`` and
    the last line the child wrote to stderr (its own one-line error, or the last line of its traceback)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
    if proc.returncode:
        last = next((line for line in reversed((proc.stderr or "").strip().splitlines()) if line.strip()), "")
        raise MedsegError(f"{what} failed (exit code {proc.returncode}): {last.strip() or 'no message'}")
    return proc


def run(main: Callable[[], object]) -> None:
    """Run ``main()`` (it parses ``sys.argv`` itself) and exit with its code; a ``MedsegError`` is one line on
    stderr and exit code 2."""
    from medseg.errors import run_cli

    raise SystemExit(run_cli(lambda _argv: main()))


def positive(text: str) -> int:
    """argparse ``type`` for a count that must be at least 1 (repeats, steps)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value
