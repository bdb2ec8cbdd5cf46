"""``python -m medseg.convert INPUT OUTPUT``: a DICOM series (or any readable image) to NIfTI/NRRD/MHA, geometry kept.

INPUT: a DICOM series folder (``--series UID`` when it holds several), a DICOM file (enhanced
multi-frame image, or a DICOM SEG: written as a label map), or a NIfTI/NRRD/MHA/MHD/PNG/TIFF file.
OUTPUT: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``, or ``.png``/``.tif`` for 2D images at the origin;
or a folder (existing, or ending in ``/``): every series of INPUT as ``series-<hash of its UID>.nii.gz``.
Only voxels and geometry are written: no DICOM header field (patient name, IDs, dates) reaches the output.
The body is :func:`medseg.workflows.convert.run`.

Example:
    python -m medseg.convert exports/CT_abdomen/ ct.nii.gz
    python -m medseg.convert exports/study/ venous.nrrd --series 1.2.840.113619.2.55.3.2831868
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.convert", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="DICOM series folder, DICOM file, or image file")
    parser.add_argument("output", help="output file (.nii.gz, .nii, .nrrd, .mha, .mhd, .png, .tif), or a folder/"
                        " for every series of a DICOM folder")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID to convert when the folder holds several")
    parser.add_argument("--label", action="store_true", help="the input is a label map: keep whole numbers, uint8/int32")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing pydicom, SimpleITK and MONAI
    from medseg.workflows import convert

    for done in convert.run(args.input, args.output, args.series, label=args.label, force=args.force):
        print(f"wrote {done.path}" + (f" (series {done.series})" if done.series else "") + f": {done.describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
