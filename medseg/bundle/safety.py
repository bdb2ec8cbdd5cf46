"""Hostile bundles refused before anything in them is used: pickled code in the weights, member paths that
leave the bundle (``..``, absolute paths, symbolic links), and bundle zips extracted only after every member
has been checked.

A ``.zip`` bundle is accepted because that is how MONAI bundles travel (the Model Zoo and
``monai.bundle download`` hand out zips); Python's ``zipfile.extractall`` would silently rewrite a ``..`` name
instead of refusing it, so each name is checked here first and the whole zip refused on the first bad one.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from medseg.errors import MedsegError


def weights_error(weights: Path, err: Exception) -> MedsegError:
    """One line for a ``torch.load(weights_only=True)`` failure: pickled code is named as such."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?: was not an allowed global|\. Please use|\n|$)", text)
    if found or "Weights only load failed" in text:
        detail = found.group(1).strip().rstrip(".") if found else "objects other than tensors"
        return MedsegError(
            f"{weights}: refused: the file is a pickle holding more than tensors ({detail}), which can run code when "
            "loaded; medseg loads bundle weights with torch.load(weights_only=True), which takes tensors and plain "
            "containers only, and ran nothing from it. Use a bundle exported by medseg, or ask its author for a plain "
            "state_dict"
        )
    first = (text.strip().splitlines() or [type(err).__name__])[0]
    return MedsegError(f"{weights}: cannot be loaded as plain weights ({type(err).__name__}: {first[:200]});"
                       " re-export the bundle from its run with python -m medseg.export RUN_DIR")


def check_bundle_folder(root: Path) -> None:
    """Refuse a bundle folder holding a symbolic link that resolves outside it (or a link that cannot resolve)."""
    base = Path(root).resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            try:
                inside = Path(path).resolve(strict=True).is_relative_to(base)
            except (OSError, RuntimeError):  # dangling or looping link
                inside = False
            if not inside:
                raise MedsegError(f"{root}: refused: {path.relative_to(root)} is a symbolic link to {target}, outside "
                                  "the bundle; copy the file into the bundle instead of linking to it")


def _bad_member(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be extracted, or None."""
    name = info.filename
    mode = info.external_attr >> 16
    if "\\" in name or "\0" in name or re.match(r"^[A-Za-z]:", name):
        return "has a backslash, a NUL or a drive letter in its name"
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        return "points outside the bundle ('..' or an absolute path)"
    if stat.S_ISLNK(mode):
        return "is a symbolic link; bundle zips hold plain files"
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is not a plain file or folder"
    return None


def extract_bundle_zip(archive: Path, dest: Path) -> Path:
    """Check every member of ``archive``, then extract it into ``dest``; returns the bundle root inside ``dest``.

    The root is ``dest`` itself when the zip holds ``configs/`` at its top, or its one top-level folder.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise MedsegError(f"{archive}: not a readable zip file ({err}); download the bundle again") from err
    with zf:
        members = zf.infolist()
        for info in members:
            why = _bad_member(info)
            if why:
                raise MedsegError(f"{archive}: refused: member '{info.filename}' {why}; nothing was extracted")
        needed = sum(info.file_size for info in members)
        free = shutil.disk_usage(dest).free
        if needed > free:
            raise MedsegError(f"{archive}: needs {needed / 1e9:.1f} GB to extract and {dest} has {free / 1e9:.1f} GB"
                              " free; set TMPDIR to a larger disk")
        try:
            zf.extractall(dest)  # sizes are bounded by the headers checked above (zipfile reads no further)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise MedsegError(f"{archive}: damaged zip ({type(err).__name__}: {err}); download the bundle again") from err
    if (dest / "configs").is_dir():
        return dest
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) == 1 and (tops[0] / "configs").is_dir():
        return tops[0]
    raise MedsegError(f"{archive}: not a MONAI Bundle zip (no configs/ at its top or in its one top-level folder)")
