"""Reading a 512x512x300 CT series: medseg's checked reader against SimpleITK's ImageSeriesReader.

Writes the series once (random HU values, oblique-free axial geometry, files in shuffled order), then
times both readers on the same files, alternating, best of ``--repeats``; checks they give the same
voxels and origin, and prints both times and the ratio (target: medseg <= 1.2x SimpleITK).

Example:
    .venv/bin/python benchmarks/bench_dicom_read.py [--slices 300] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _cli import need, positive, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--keep", type=Path, help="write the series here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if args.keep is not None and args.keep.exists():
        need(args.keep, "--keep", "folder", "where the series is written and kept")

    import SimpleITK as sitk

    from medseg.data.dicom import read_dicom, write_series

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_dicom_"))
    folder = work / "series"
    try:
        rng = np.random.default_rng(0)
        volume = rng.integers(-1024, 2000, (args.size, args.size, args.slices)).astype(np.float64)
        affine = np.diag([0.7, 0.7, 1.25, 1.0])
        affine[:3, 3] = (-180.0, -170.0, -400.0)
        order = list(rng.permutation(args.slices))
        if not folder.is_dir():
            t0 = time.perf_counter()
            write_series(folder, volume, affine, file_order=order)
            print(f"wrote {args.slices} slices of {args.size}x{args.size} in {time.perf_counter() - t0:.1f}s to {folder}")

        def read_medseg():
            vol = read_dicom(folder)
            return vol.array, vol.affine[:3, 3]

        def read_sitk():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
            image = reader.Execute()
            return sitk.GetArrayFromImage(image), np.array(image.GetOrigin())

        times = {"medseg": [], "sitk": []}
        results = {}
        for _ in range(args.repeats):
            for name, fn in (("sitk", read_sitk), ("medseg", read_medseg)):
                t0 = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t0)
        ours, theirs = results["medseg"], results["sitk"]
        same = np.array_equal(ours[0], np.asarray(theirs[0]).transpose(2, 1, 0)) and np.allclose(ours[1], theirs[1], atol=1e-3)
        best = {k: min(v) for k, v in times.items()}
        print(f"medseg read_dicom:             {best['medseg']:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times['medseg'])})")
        print(f"SimpleITK ImageSeriesReader:   {best['sitk']:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times['sitk'])})")
        ratio = best["medseg"] / best["sitk"]
        print(f"ratio medseg / SimpleITK: {ratio:.2f}x (target <= 1.2x); same voxels and origin: {same}")
        return 0 if same else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(main)
