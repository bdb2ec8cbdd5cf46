"""Data shipped inside registry wheels (the LiTS crop, the stardist nuclei image): fetch one wheel, no
dependencies, and read its members only after their SHA-256 matches the pinned value."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from medseg.errors import MedsegError

logger = logging.getLogger("medseg.data")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(download_dir: Path, package: str, wheel_glob: str, what: str) -> Path:
    """The wheel matching ``wheel_glob`` in ``download_dir``, downloaded there first (``pip download --no-deps``)."""
    wheels = sorted(download_dir.glob(wheel_glob))
    if wheels:
        return wheels[0]
    created = not download_dir.exists()
    download_dir.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s (wheel only, no dependencies) from the package index", package)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", package]
    result = subprocess.run(cmd + ["-d", str(download_dir)], capture_output=True, text=True, check=False)
    wheels = sorted(download_dir.glob(wheel_glob))
    if result.returncode != 0 or not wheels:
        if created and not any(download_dir.iterdir()):
            download_dir.rmdir()  # leave the user's folder as it was
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise MedsegError(f"could not download the {what} {package} ({reason}); put its wheel in {download_dir},"
                          " or give --data-dir your own dataset's folder (or the folder holding it)")
    return wheels[0]


def verified_members(wheel: Path, members: dict[str, tuple[str, str]], what: str) -> dict[str, bytes]:
    """``{key: bytes}`` of ``members`` (``key -> (member path, SHA-256)``), each checked against its digest."""
    out = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for key, (member, digest) in members.items():
                data = zf.read(member)
                if sha256(data) != digest:
                    raise MedsegError(f"{wheel}: {member} has SHA-256 {sha256(data)}, expected {digest}; delete the"
                                      " wheel so it is fetched again")
                out[key] = data
    except (zipfile.BadZipFile, KeyError) as err:
        raise MedsegError(f"{wheel}: not the expected {what} ({err}); delete it so it is fetched again") from err
    return out
