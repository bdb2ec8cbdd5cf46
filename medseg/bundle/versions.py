"""Every exported bundle is kept: versioned folders, and a stable name for the latest.

Layout of a bundles folder::

    bundles/liver_ct_segmentation -> liver_ct_segmentation-v3   relative symlink: the latest export
    bundles/liver_ct_segmentation-v1/                           metadata.json "version": "0.1.0"
    bundles/liver_ct_segmentation-v2/                           "0.2.0", changelog of 0.2.0 and 0.1.0
    bundles/liver_ct_segmentation-v3/                           "0.3.0", ...
    bundles/.liver_ct_segmentation.lock                         held while a version is published

Each version folder is a complete MONAI Bundle (copy it, zip it, run it with ``monai.bundle run``); the stable
name is a symlink, so ``--bundle bundles/liver_ct_segmentation`` and ``monai.bundle run --bundle_root`` both
see the latest without knowing about versions. Versions are numbered and published under a file lock
(two runs finishing at once get v1 and v2, each whole); the folder is built beside them under a unique
temporary name and renamed into place, and the link is swapped with an atomic rename.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from medseg.data.images import check_can_write
from medseg.errors import MedsegError, no_folder

VERSION_DIR = re.compile(r"^(?P<name>.+)-v(?P<n>\d+)$")


def version_string(n: int) -> str:
    """Version ``n`` (folder ``<name>-v<n>``) as metadata.json's semantic version: each export a minor release."""
    return f"0.{n}.0"


def _version_number(meta_version: str) -> int | None:
    m = re.match(r"^0\.(\d+)\.0$", str(meta_version))
    return int(m.group(1)) if m else None


def lock(parent: Path, name: str) -> FileLock:
    return FileLock(str(parent / f".{name}.lock"), timeout=600)


def versions(parent: Path, name: str) -> dict[int, Path]:
    """The version folders of bundle ``name`` under ``parent``: number -> folder."""
    found = {}
    if parent.is_dir():
        for child in parent.iterdir():
            m = VERSION_DIR.match(child.name)
            if m and m.group("name") == name and child.is_dir() and not child.is_symlink():
                found[int(m.group("n"))] = child
    return dict(sorted(found.items()))


def _read_meta(bundle: Path) -> dict[str, Any]:
    try:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def check_target(parent: Path, name: str, flag: str = "bundle.dir/bundle.name") -> None:
    """One line (:class:`MedsegError`) when ``parent/name`` cannot take a new bundle version without destroying
    something that is not a bundle: a file there (the stable name's link would replace it), a folder there that
    is not a MONAI bundle (it would be renamed to ``<name>-v<n>``), a link there to anything but a version folder
    beside it, or a ``parent`` that is (or lies under) a file."""
    stable = parent / name
    for above in (parent, *parent.parents):
        if above.exists() and not above.is_dir():
            raise MedsegError(f"{flag} {stable}: {above} is a file, not a folder; give a bundle path in a folder")
        if above.is_dir():
            check_can_write(above, f"{flag} {stable}")
            break
    if stable.is_symlink():
        target = stable.resolve()
        m = VERSION_DIR.match(target.name)
        if not (m and m.group("name") == name and target.parent == parent.resolve()):
            raise MedsegError(f"{flag} {stable}: a link to {target}, not to a version folder {name}-v<n> beside it; "
                              "give a new bundle path (or the bundle's own stable name)")
    elif stable.exists() and not stable.is_dir():
        raise MedsegError(f"{flag} {stable}: an existing file, not a bundle; give a new bundle path "
                          "(it would be replaced by the link to the bundle)")
    elif stable.is_dir() and not (stable / "configs" / "metadata.json").is_file():
        raise MedsegError(f"{flag} {stable}: an existing folder that is not a MONAI bundle (no configs/metadata.json); "
                          "give a new bundle path (its contents would be moved aside)")


def _adopt_unversioned(parent: Path, name: str) -> None:
    """A bundle folder written before versioning (a real folder at the stable name) becomes a version."""
    stable = parent / name
    if stable.is_symlink() or not stable.is_dir():
        return
    check_target(parent, name)  # a folder that is not a bundle is never moved
    taken = versions(parent, name)
    n = _version_number(_read_meta(stable).get("version", ""))
    if n is None or n in taken:
        n = max(taken, default=0) + 1
    stable.rename(parent / f"{name}-v{n}")


def _point_latest(parent: Path, name: str, folder: Path) -> None:
    """Make ``parent/name`` the latest version, atomically: a new relative link renamed over the old one."""
    link = parent / f".{name}.link-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.symlink(folder.name, link, target_is_directory=True)
    except OSError:  # a filesystem without symlinks: the stable name is a copy of the latest
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.copy-", dir=parent))
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        old = parent / f".{name}.old-{os.getpid()}"
        if (parent / name).exists():
            (parent / name).rename(old)
        tmp.rename(parent / name)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(link, parent / name)


def publish(tmp: Path, parent: Path, name: str, finalise: Callable[[Path, str, dict[str, str]], None]) -> Path:
    """Move the built bundle ``tmp`` in as the next version of ``name`` and point the stable name at it.

    Under the bundle's file lock: number the version, call ``finalise(tmp, version, changelog)`` (which writes
    metadata.json with that version and the changelog of every earlier version, and whatever embeds it), rename
    ``tmp`` to ``<name>-v<n>``, swap the link. Returns the version folder."""
    with lock(parent, name):
        check_target(parent, name)  # again under the lock: what sits at the stable name may have changed
        _adopt_unversioned(parent, name)
        earlier = versions(parent, name)
        n = max(earlier, default=0) + 1
        changelog: dict[str, str] = {}
        for folder in reversed(earlier.values()):  # newest first, as MONAI's model zoo writes it
            for version, text in _read_meta(folder).get("changelog", {}).items():
                changelog.setdefault(str(version), str(text))
        finalise(tmp, version_string(n), changelog)
        folder = parent / f"{name}-v{n}"
        tmp.rename(folder)
        _point_latest(parent, name, folder)
    return folder


def resolve(bundle: Path) -> Path:
    """The version folder a stable bundle name points at (the path itself for anything else)."""
    if bundle.is_symlink():
        target = bundle.resolve()
        m = VERSION_DIR.match(target.name)
        if m and m.group("name") == bundle.name and target.parent == bundle.parent.resolve():
            return target
    return bundle


def list_bundles(parent: Path) -> list[dict[str, Any]]:
    """One row per bundle version under ``parent`` (and per unversioned bundle folder), oldest first; ``parent``
    a bundle itself (``--dir bundles/liver_ct_segmentation``): that bundle's versions."""
    if not parent.is_dir():
        raise no_folder(parent, f"--dir {parent}", "the folder holding the bundles (default: bundles)")
    if (parent / "configs" / "metadata.json").is_file():
        m = VERSION_DIR.match(resolve(parent).name)
        name = m.group("name") if m else parent.name
        return [r for r in list_bundles(parent.absolute().parent) if r["name"] == name]
    latest = {resolve(c).name for c in parent.iterdir() if c.is_symlink()}
    rows = []
    for child in sorted(parent.iterdir(), key=lambda c: c.name):
        if child.name.startswith(".") or child.is_symlink() or not (child / "configs" / "metadata.json").is_file():
            continue
        meta = _read_meta(child)
        export = meta.get("medseg_export", {}) if isinstance(meta.get("medseg_export"), dict) else {}
        m = VERSION_DIR.match(child.name)
        dice = {k[:-len("_dice")]: v for k, v in (meta.get("eval_metrics") or {}).items() if k.endswith("_dice")}
        rows.append({
            "name": m.group("name") if m else child.name, "version": meta.get("version", "?"),  # as addressed
            "number": int(m.group("n")) if m else 0, "date": export.get("exported", ""),
            "task": export.get("task", meta.get("task", "")), "run": export.get("run", ""), "dice": dice,
            "folder": child, "latest": child.name in latest or not m,
        })
    return sorted(rows, key=lambda r: (r["name"], r["number"]))


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The ``medseg.export --list`` table."""
    if not rows:
        return "no bundles"
    table = [("name", "version", "date (UTC)", "task", "folder", "run", "validation Dice")]
    for r in rows:
        dice = ", ".join(f"{c} {v:.3f}" for c, v in r["dice"].items()) or "-"
        table.append((r["name"], r["version"] + (" (latest)" if r["latest"] else ""), r["date"] or "-", r["task"],
                      r["folder"].name, r["run"] or "-", dice))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
