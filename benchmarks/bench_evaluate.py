"""``python -m medseg.evaluate`` end to end on a 512x512x200 uncompressed NIfTI pair, against MONAI in the same run.

The command runs as a user runs it (a subprocess: start-up, reading, class masks, metrics, CSV/JSON/box plot)
on the big pair and on a 32x32x8 pair; its *extra* time on the big pair (big minus tiny, best of ``--repeats``
each) is compared with MONAI loading both masks (``LoadImage``) and computing HD95 + ASSD + NSD
(``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDistanceMetric(symmetric=True)``, ``SurfaceDiceMetric``).
Target (issue 16.2): extra time <= 0.2x MONAI's load-and-metrics time, with the same values.

    .venv/bin/python benchmarks/bench_evaluate.py [--repeats 5] [--jobs 2] [--profile]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
from monai.transforms import LoadImage

from _cli import positive, run
from bench_surface_metrics import SPACING, liver_like_pair

TOL = 2.0


def write_pair(folder: Path, pred: np.ndarray, ref: np.ndarray) -> tuple[Path, Path]:
    """Uncompressed uint8 NIfTI label maps (0 background, 1 liver) in ``folder``/pred and ``folder``/ref."""
    affine = np.diag([*SPACING, 1.0])
    paths = []
    for name, mask in (("pred", pred), ("ref", ref)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        path = folder / name / "case_000.nii"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), path)
        paths.append(path)
    return paths[0], paths[1]


def run_command(folder: Path, jobs: int, profile: Path | None = None) -> float:
    """Wall time of one ``python -m medseg.evaluate`` on ``folder``'s pair (optionally under cProfile)."""
    prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    cmd = [*prefix, "-m", "medseg.evaluate", "--pred", str(folder / "pred"), "--ref", str(folder / "ref"),
           "--labels", "liver=1", "--tolerance-mm", str(TOL), "--output", str(folder / "out"), "--jobs", str(jobs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - t0


def monai_load_and_metrics(pred_path: Path, ref_path: Path) -> tuple[float, float, float]:
    loader = LoadImage(image_only=True)
    p = torch.as_tensor(np.asarray(loader(str(pred_path))) > 0)[None, None]
    r = torch.as_tensor(np.asarray(loader(str(ref_path))) > 0)[None, None]
    spacing = list(SPACING)
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95)(p, r, spacing=spacing)
    assd = SurfaceDistanceMetric(include_background=True, symmetric=True)(p, r, spacing=spacing)
    nsd = SurfaceDiceMetric(class_thresholds=[TOL], include_background=True)(p, r, spacing=spacing)
    return float(hd95.item()), float(assd.item()), float(nsd.item())


def best(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="the command's --jobs")
    parser.add_argument("--profile", action="store_true", help="also write a cProfile of one big-pair run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        big, tiny = Path(tmp) / "big", Path(tmp) / "tiny"
        pred, ref = liver_like_pair()
        big_pred, big_ref = write_pair(big, pred, ref)
        small = np.zeros((32, 32, 8), bool)
        small[8:20, 10:24, 2:6] = True
        write_pair(tiny, np.roll(small, 1, axis=0), small)
        print(f"pair {pred.shape} uint8 at {SPACING} mm, uncompressed NIfTI ({big_ref.stat().st_size / 1e6:.0f} MB each)")

        t_monai, v_monai = best(lambda: monai_load_and_metrics(big_pred, big_ref), args.repeats)
        # interleaved, so that load from other processes on the machine falls on both alike; best of each
        runs = [(run_command(big, args.jobs), run_command(tiny, args.jobs)) for _ in range(args.repeats)]
        t_big, t_tiny = min(r[0] for r in runs), min(r[1] for r in runs)
        row = json.loads((big / "out" / "metrics.json").read_text())["liver"]
        v_ours = (row["hd95_mm"], row["assd_mm"], row["nsd"])
        for name, a, b in zip(("HD95 (mm)", "ASSD (mm)", f"NSD@{TOL:g}mm"), v_monai, v_ours):
            print(f"{name:<12} MONAI {a:.6f}  medseg.evaluate {b:.6f}  |diff| {abs(a - b):.2e}")
        extra = t_big - t_tiny
        print(f"MONAI LoadImage x2 + HD95 + ASSD + NSD:      {t_monai:.3f} s (best of {args.repeats})")
        print(f"medseg.evaluate command, big pair:          {t_big:.3f} s (best of {args.repeats})")
        print(f"medseg.evaluate command, 32x32x8 pair:      {t_tiny:.3f} s (best of {args.repeats})")
        print(f"extra time of the command on the big pair:  {extra:.3f} s")
        print(f"ratio extra / MONAI: {extra / t_monai:.3f} (target <= 0.200)")
        if args.profile:
            out = Path("bench_evaluate.prof")
            run_command(big, args.jobs, profile=out.resolve())
            print(f"profile of one big-pair run: {out} (python -m pstats {out})")
        if max(abs(a - b) for a, b in zip(v_monai, v_ours)) > 1e-3:
            raise SystemExit("values differ by more than 1e-3")


if __name__ == "__main__":
    run(main)
