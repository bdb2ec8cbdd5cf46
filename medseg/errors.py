"""User-facing errors and the command-line wrapper that turns them into one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger("medseg")


class MedsegError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2, no traceback unless --debug."""


def user_error(err: BaseException) -> MedsegError | None:
    """The :class:`MedsegError` behind ``err``: itself, or one in its cause chain (MONAI's ``apply_transform``
    re-raises a transform's error as ``RuntimeError("applying transform ...")`` from it); None if there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MedsegError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def failure_line(err: BaseException, limit: int = 300) -> str:
    """Why ``err`` stopped a case, in one line: the :class:`MedsegError` behind it (:func:`user_error`), else its
    type and the first line of its text."""
    found = user_error(err)
    if found is not None:
        return str(found)
    first = (str(err).strip().splitlines() or [""])[0][:limit]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def check_folder_option(path: str | Path | None, flag: str, what: str) -> None:
    """One line, before any work, when ``path`` (a command's output folder option) is an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise MedsegError(f"{flag} {path}: a file, not a folder; give the folder {what}")


def no_folder(path: str | Path, label: str, what: str) -> MedsegError:
    """The one line for ``label`` (an argument naming ``path``) that must be an existing folder and is not:
    "a file, not a folder" when it is one, else "no such folder"; ``what``: the folder to give instead."""
    found = "a file, not a folder" if Path(path).exists() else "no such folder"
    return MedsegError(f"{label}: {found}; give {what}")


#: what a training or distillation run writes once it trains (what marks a folder as holding one; a run that
#: stopped before its first step, e.g. at an unreachable tracking server, leaves only its config and may be redone)
RUN_MARKERS = ("checkpoints", "history.json", "metrics.json", "run.json", "distill.json")


def check_new_run_folder(path: str | Path | None, flag: str, hint: str = "") -> None:
    """One line, before any work, when ``path`` (a run's ``--output-dir``) already holds a run (or a fold of a
    k-fold run, ``fold_<i>/``): a second run there would overwrite its checkpoints, metrics and report.
    ``hint``: how to continue that run instead."""
    if path is None or not Path(path).is_dir():
        return
    folders = [Path(path), *sorted(Path(path).glob("fold_*"))]
    found = [str(f.relative_to(path) / m) if f != Path(path) else m
             for f in folders for m in RUN_MARKERS if (f / m).exists()]
    if found:
        raise MedsegError(f"{flag} {path}: holds an earlier run ({found[0]}); give a new or empty folder"
                          + (f" ({hint})" if hint else ""))


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main`` and map a :class:`MedsegError` to one line on stderr and exit code 2.

    Args:
        main: the command's entry point; takes argv, returns an exit code or None.
        argv: arguments (default ``sys.argv[1:]``).

    Example:
        >>> raise SystemExit(run_cli(main))
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        return int(main(args) or 0)
    except MedsegError as err:
        if debug:
            raise
        print(f"medseg: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a MedsegError inside MONAI's wrapping (a transform's RuntimeError) is still one line
        cause = user_error(err)
        if cause is None or debug:
            raise
        print(f"medseg: error: {cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130
