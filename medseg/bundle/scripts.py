"""A bundle's ``scripts/`` folder: medseg's own transforms and networks, copied so stock MONAI runs them.

Each lower layer names what ships (:data:`medseg.transforms.pipeline.SCRIPT_MODULES`,
:data:`medseg.networks.SCRIPT_MODULES`): modules that import only torch, numpy, scipy, MONAI (and
SimpleITK for N4) plus their shipped siblings, by relative imports. They are copied unchanged into one
package per layer (``scripts/medseg_transforms/``, ``scripts/medseg_networks/``) whose ``__init__.py``
re-exports the classes, so a config names ``scripts.medseg_transforms.ScaleSpacingd`` whichever file holds it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from medseg import errors, networks
from medseg.data import dicom_reader
from medseg.inference import chain
from medseg.transforms import pipeline

from medseg.bundle import datalist

#: the package of :mod:`medseg.bundle.datalist` (inference.json's ``datalist``) in a bundle's ``scripts/``
DATALIST_PACKAGE = "medseg_bundle"

README = '"""Code this bundle needs that MONAI does not provide (written by medseg)."""\n'


def write_package(scripts_dir: Path, package: str, modules: Sequence[ModuleType], exports: Iterable[type]) -> Path:
    """Copy ``modules`` into ``scripts_dir/package/`` with an ``__init__.py`` importing ``exports`` from them.

    Example:
        >>> write_package(bundle / "scripts", "medseg_networks", networks.SCRIPT_MODULES, [OriginalUNet])
    """
    folder = scripts_dir / package
    folder.mkdir(parents=True)
    stems = {m.__name__: m.__name__.rsplit(".", 1)[-1] for m in modules}
    for module in modules:
        shutil.copyfile(module.__file__, folder / f"{stems[module.__name__]}.py")
    lines = [f'"""medseg\'s own code, copied from {", ".join(sorted(stems))} (see the modules\' docstrings)."""', ""]
    for cls in exports:
        if cls.__module__ not in stems:
            raise ValueError(f"{cls.__qualname__} lives in {cls.__module__}, which is not among the shipped modules")
        lines.append(f"from .{stems[cls.__module__]} import {cls.__name__}")
    (folder / "__init__.py").write_text("\n".join(lines) + "\n")
    return folder


def write_scripts(bundle_dir: Path) -> Path:
    """``bundle_dir/scripts/``: the own transforms, the own networks (with the size-padding wrapper) and the
    DICOM series reader that LoadImaged uses (with medseg.errors, which it imports)."""
    scripts = bundle_dir / "scripts"
    scripts.mkdir()
    (scripts / "__init__.py").write_text(README)
    write_package(scripts, pipeline.SCRIPT_PACKAGE, pipeline.SCRIPT_MODULES, pipeline.OWN_TRANSFORMS.values())
    write_package(scripts, networks.SCRIPT_PACKAGE, networks.SCRIPT_MODULES, networks.SCRIPT_CLASSES)
    write_package(scripts, dicom_reader.SCRIPT_PACKAGE, dicom_reader.SCRIPT_MODULES, dicom_reader.SCRIPT_CLASSES)
    shutil.copyfile(errors.__file__, scripts / "errors.py")  # the shipped DICOM modules import it as ..errors
    write_package(scripts, chain.SCRIPT_PACKAGE, chain.SCRIPT_MODULES, chain.SCRIPT_CLASSES)  # NIfTI reader, post
    write_package(scripts, DATALIST_PACKAGE, [datalist], [datalist.image_list])  # inference.json's datalist
    return scripts
