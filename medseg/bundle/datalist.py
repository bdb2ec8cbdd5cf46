"""The images a bundle's ``inference.json`` segments: ``datalist`` = :func:`image_list` of ``dataset_dir``.

Shipped in the bundle (``scripts/medseg_bundle/``) and run by stock MONAI, so this module imports the standard
library only. A ``dataset_dir`` that is missing, a file, or holds no image stops the run with a message naming
the folder and what to pass (``--dataset_dir FOLDER``) instead of a run that writes nothing and exits 0; the
masks an earlier run wrote into the same folder (``*_seg.*``, ``output_dir`` = ``dataset_dir``) are not cases.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

#: what the bundle writes beside a case (``SaveImaged``'s ``output_postfix``): not a case of a later run there
OUTPUT_POSTFIX = "_seg"


def _stem(path: str, patterns: Sequence[str]) -> str:
    name = os.path.basename(path)
    for pattern in sorted(patterns, key=len, reverse=True):  # ".nii.gz" before ".gz"-less ".nii"
        suffix = pattern.lstrip("*")
        if name.lower().endswith(suffix.lower()):
            return name[: len(name) - len(suffix)]
    return name


def image_list(dataset_dir: str, patterns: Sequence[str], output_dir: str | None = None) -> list[str]:
    """The files in ``dataset_dir`` matching ``patterns`` (``*.nii.gz``, ...), sorted; raises ``FileNotFoundError``
    with one line naming ``dataset_dir`` when there is nothing to segment."""
    folder = str(dataset_dir)
    hint = "run with --dataset_dir FOLDER, the folder holding the images (" + ", ".join(patterns) + ")"
    if not os.path.isdir(folder):
        what = "a file, not a folder" if os.path.exists(folder) else "no such folder"
        raise FileNotFoundError(f"dataset_dir '{folder}': {what}; {hint}")
    found = sorted({p for pattern in patterns for p in glob.glob(os.path.join(glob.escape(folder), pattern))
                    if os.path.isfile(p)})
    if output_dir is not None and os.path.isdir(str(output_dir)) \
            and os.path.realpath(str(output_dir)) == os.path.realpath(folder):
        found = [p for p in found if not _stem(p, patterns).endswith(OUTPUT_POSTFIX)]  # an earlier run's masks
    if not found:
        raise FileNotFoundError(f"dataset_dir '{folder}': no image in it; {hint}")
    return found
