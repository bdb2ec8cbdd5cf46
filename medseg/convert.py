"""``python -m medseg.convert INPUT OUTPUT``: a DICOM series (or any readable image) to NIfTI/NRRD/MHA, geometry kept.

INPUT: a DICOM series folder (``--series UID`` when it holds several), a DICOM file (enhanced
multi-frame image, or a DICOM SEG: written as a label map), or a NIfTI/NRRD/MHA/MHD/PNG/TIFF file.
OUTPUT: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``, or ``.png``/``.tif`` for 2D images at the origin;
or a folder (existing, or ending in ``/``): every series of INPUT as ``series-<hash of its UID>.nii.gz``.
Only voxels and geometry are written: no DICOM header field (patient name, IDs, dates) reaches the output.

Example:
    python -m medseg.convert exports/CT_abdomen/ ct.nii.gz
    python -m medseg.convert exports/study/ venous.nrrd --series 1.2.840.113619.2.55.3.2831868
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import MedsegError, run_cli


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


def convert(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    trailing_slash = args.output.endswith(("/", "\\"))
    args.output = Path(args.output)
    import numpy as np

    from medseg.data.check import SEG_SOP_CLASS
    from medseg.data.dicom import is_dicom_file
    from medseg.data.images import WRITE_SUFFIXES, describe_geometry, read_image, suffix_of, write_image

    if args.output.is_dir() or trailing_slash:
        return _convert_all_series(args.input, args.output, args.force)
    if suffix_of(args.output) not in WRITE_SUFFIXES:
        raise MedsegError(f"{args.output}: unknown output format; use one of {', '.join(WRITE_SUFFIXES)}")
    if args.output.exists() and not args.force:
        raise MedsegError(f"{args.output}: exists; pass --force to replace it")
    if args.input.resolve() == args.output.resolve():
        raise MedsegError(f"{args.output}: is the input; inputs are never overwritten")
    if not args.input.exists():
        raise MedsegError(f"{args.input}: no such file or folder")
    is_seg = False
    if args.input.is_file() and is_dicom_file(args.input):
        import pydicom

        try:
            is_seg = str(pydicom.dcmread(args.input, stop_before_pixels=True).get("SOPClassUID", "")) == SEG_SOP_CLASS
        except Exception as err:  # damaged files: reported by the reader below with the file name
            del err
    if is_seg:
        from medseg.data.labelmaps import read_labelmap

        lm = read_labelmap(args.input)
        array, affine = lm.array, lm.affine
    else:
        image = read_image(args.input, args.series)
        array, affine = image.array, image.affine
    if args.label or is_seg:
        from medseg.data.labelmaps import _as_labels

        array = _as_labels(np.asarray(array), args.input)
        array = array.astype(np.uint8 if array.min() >= 0 and array.max() <= 255 else np.int32)
    write_image(array, affine, args.output)
    print(f"wrote {args.output}: {describe_geometry(array.shape, affine)} (LPS), {array.dtype}")
    return 0


def _convert_all_series(folder: Path, out_dir: Path, force: bool) -> int:
    """Every series of a DICOM folder to ``OUT_DIR/series-<hash of its UID>.nii.gz`` (names carry no patient data)."""
    from medseg.data.dicom import find_series, hashed_uid
    from medseg.data.images import describe_geometry, read_image, write_image

    if not folder.is_dir():
        raise MedsegError(f"{folder}: a folder output needs a DICOM folder as input")
    series = find_series(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    for uid in sorted(series):
        target = out_dir / f"{hashed_uid(uid)}.nii.gz"
        if target.exists() and not force:
            raise MedsegError(f"{target}: exists; pass --force to replace it")
        image = read_image(folder, uid)
        write_image(image.array, image.affine, target)
        print(f"wrote {target} (series {series[uid].summary()}): {describe_geometry(image.array.shape, image.affine)} (LPS)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
