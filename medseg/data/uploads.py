"""Checks on image files that arrive over the network (``medseg.serve``'s uploads) before any reader opens them."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MedsegError

#: the formats whose header may name a separate file holding the voxels (MetaImage, NRRD)
_METAIMAGE_SUFFIXES = (".mha", ".mhd")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")


def check_self_contained(path: Path, shown: str) -> None:
    """Refuse (one :class:`MedsegError` line naming the upload ``shown``) a MetaImage or NRRD file whose header
    names a separate data file (MetaImage ``ElementDataFile`` other than ``LOCAL``; NRRD ``data file``): the
    reader would open that path on the server, any file the server may read, not voxels sent with the upload."""
    name = path.name.lower()
    if name.endswith(_METAIMAGE_SUFFIXES):
        with open(path, "rb") as f:
            for raw in f:  # the header ends with ElementDataFile; binary voxels follow it
                key, sep, value = raw.decode("latin-1").partition("=")
                if sep and key.strip().lower() == "elementdatafile":
                    if value.strip().upper() != "LOCAL":
                        raise MedsegError(f"upload {shown!r}: its header reads the voxels from another file"
                                          f" (ElementDataFile = {value.strip()[:60]}); send one .mha file with"
                                          " the voxels in it (ElementDataFile = LOCAL)")
                    return
    elif name.endswith(_NRRD_SUFFIXES):
        with open(path, "rb") as f:
            for raw in f:  # the header ends at its first blank line
                line = raw.decode("latin-1").strip()
                if not line:
                    return
                key, sep, _ = line.partition(":")
                if sep and not line.startswith("#") and key.strip().lower() in ("data file", "datafile"):
                    raise MedsegError(f"upload {shown!r}: its header reads the voxels from another file ('data"
                                      " file'); send one .nrrd file with the voxels in it")
