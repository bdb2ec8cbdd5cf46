"""Prediction and reference label files paired by case: ``case_001.nii.gz`` <-> ``case_001.nrrd``.

A prediction named ``<case>_seg.*`` (as MONAI bundles write them) matches ``<case>`` too. Names are compared in
Unicode NFC: a file named on macOS (``ü`` stored as ``u`` + a combining diaeresis) pairs with the same name typed
elsewhere.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from medseg.data.formats import IMAGE_SUFFIXES as SUFFIXES
from medseg.data.labelmaps import case_name
from medseg.errors import MedsegError


def case_key(path: Path) -> str:
    """The case name of a label file (:func:`medseg.data.labelmaps.case_name`) in Unicode NFC, the form it is
    paired in."""
    return unicodedata.normalize("NFC", case_name(path))


def find_cases(folder: Path, what: str) -> dict[str, Path]:
    """Case name -> label file in ``folder`` (``what`` names the folder in messages: "prediction", "reference")."""
    folder = Path(folder)
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise MedsegError(f"{what} folder {folder} {state}; give the folder that holds the {what} label files")
    found: dict[str, Path] = {}
    # an earlier evaluation written into this folder (its CSV beside it): its plot is not a case
    own = {"metrics_boxplot.png"} if (folder / "metrics_per_case.csv").is_file() else set()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(SUFFIXES) and path.name not in own:
            name = case_key(path)
            if name in found:
                raise MedsegError(f"{what} folder {folder}: two files for case '{name}' ({found[name].name}, {path.name})")
            found[name] = path
    if not found:
        raise MedsegError(f"{what} folder {folder} holds no label files ({', '.join(SUFFIXES)})")
    return found


def match(preds: dict[str, Path], refs: dict[str, Path]) -> tuple[dict[str, Path | None], list[str]]:
    """Reference case -> prediction path (None when missing), and the missing case names."""
    matched: dict[str, Path | None] = {}
    for case in refs:
        matched[case] = preds.get(case) or preds.get(f"{case}_seg")
    return matched, [c for c, p in matched.items() if p is None]
