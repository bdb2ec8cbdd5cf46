"""``python -m medseg.evaluate``: score a folder of predictions against a folder of references.

Cases are matched by file name without the image suffix (``case_001.nii.gz`` ↔ ``case_001.nrrd``);
a prediction named ``<case>_seg.*`` (as MONAI bundles write them) matches ``<case>`` too. Writes
``metrics_per_case.csv``, ``metrics.json`` (mean, std, median per class) and ``metrics_boxplot.png``.

Example:
    python -m medseg.evaluate --pred runs/liver/x/predictions --ref data/Task03_Liver/labelsTr \\
        --labels liver=1+2,tumour=2 --tolerance-mm 2 --output eval/
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from medseg.errors import run_cli
from medseg.evaluation import format_table
from medseg.evaluation.classes import parse_classes
from medseg.workflows import evaluate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.evaluate", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    p.add_argument("--ref", type=Path, required=True, help="folder of reference label maps")
    p.add_argument("--labels", help="classes as NAME=VALUE[+VALUE], e.g. liver=1+2,tumour=2 (default: each label)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="tolerance for NSD and boundary F1 (mm)")
    p.add_argument("--worst-mm", type=float, help="distance given when one mask is empty (default: image diagonal)")
    p.add_argument("--resample", action="store_true", help="map predictions on another grid to the reference grid")
    p.add_argument("--missing-as-empty", action="store_true", help="score a missing prediction as an empty mask")
    p.add_argument("--predicted-only", action="store_true",
                   help="score only the reference cases that have a prediction (e.g. --ref labelsTr holding the"
                        " training cases too, --pred the validation predictions); the others are listed, not scored")
    p.add_argument("--output", type=Path, default=Path("evaluation"), help="output folder (default ./evaluation)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes, one case each")
    p.add_argument("--instances", action="store_true",
                   help="instance metrics (object F1 at IoU 0.5, mean matched IoU, AJI, adapted Rand error, VI) of"
                        " <case>_instances.tif predictions against reference instance label images")
    p.add_argument("--membranes", action="store_true",
                   help="membrane masks (EM, ISBI 2012: 0 membrane, else cell): pixel error and adapted Rand error on"
                        " the cell regions of <case>_seg.* predictions against reference masks")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _cases(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def empty_mask_notes(per_case: dict[str, dict[str, dict]], worst_mm: float | None) -> list[str]:
    """A line per class under the table where a case's mask is empty: its distances are not measured but set by
    rule (one mask empty: the worst distance; both empty, in some cases only: 0), and they are in the means."""
    worst = "--worst-mm" if worst_mm is not None else "the image diagonal; --worst-mm sets it"
    notes = []
    names = list(dict.fromkeys(c for case in per_case.values() for c in case))
    for name in names:
        flags = {case: classes[name]["flag"] for case, classes in per_case.items() if name in classes}
        one = {f: [c for c, g in flags.items() if g == f] for f in ("prediction empty", "reference empty")}
        both = [c for c, g in flags.items() if g == "both empty"]
        for flag, cases in one.items():
            if cases:
                values = sorted({round(float(per_case[c][name]["hd95_mm"]), 2) for c in cases})
                mm = f"{values[0]:.2f}" if len(values) == 1 else f"{values[0]:.2f}-{values[-1]:.2f}"
                notes.append(f"note: class '{name}': {flag} in {len(cases)} of {len(flags)} case(s) ({_cases(cases)}):"
                             f" Dice 0, and HD, HD95, ASSD and MASD there are set to the worst distance, {mm} mm"
                             f" ({worst}), not measured; the means above include them (flag column of"
                             " metrics_per_case.csv)")
        if both and len(both) < len(flags):  # every case both empty: the warning below
            notes.append(f"note: class '{name}': empty in both masks in {len(both)} of {len(flags)} case(s)"
                         f" ({_cases(both)}): Dice 1 and distances 0 there by rule; the means above include them")
    return notes


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.instances or args.membranes:
        result = evaluate.run_instances(args.pred, args.ref, args.output, membranes=args.membranes,
                                        missing_as_empty=args.missing_as_empty, predicted_only=args.predicted_only)
        mean = result["mean"]
        print("  ".join(f"{k} {mean[k]:.4f}" for k in ("pixel_error", "object_f1", "mean_matched_iou", "aji",
                                                       "adapted_rand_error", "vi") if k in mean))
        stem = "membrane_metrics" if args.membranes else "instance_metrics"
        print(f"wrote {args.output / (stem + '.csv')} and {args.output / (stem + '.json')}")
        return 0
    classes = parse_classes(args.labels)
    # the bar shows on a terminal only (a line per case otherwise); it is closed before any error line is printed
    with tqdm(desc="evaluating", unit="case", file=sys.stderr, disable=None) as bar:
        def advance(case: str, done: int, total: int) -> None:
            bar.total = total
            bar.update()
            if bar.disable:
                print(f"[{done}/{total}] {case}", flush=True)

        try:
            result = evaluate.run(args.pred, args.ref, labels=classes, tolerance_mm=args.tolerance_mm,
                                  output=args.output, resample=args.resample, missing_as_empty=args.missing_as_empty,
                                  worst_mm=args.worst_mm, jobs=args.jobs, on_case=advance,
                                  predicted_only=args.predicted_only)
        except evaluate.MissingPredictions:
            bar.close()  # before run_cli prints the line (exit code 2: the folders do not pair up)
            raise
    print(format_table(result.summary, "mm" if result.unit == "mixed" else result.unit))
    if result.unit == "px":
        print("note: the reference pictures state no pixel size: distances are in pixels (the *_mm columns of"
              " the files, and --tolerance-mm), areas in thousands of pixels (the *_ml columns)")
    elif result.unit == "µm":
        print("note: the reference pictures are TIFFs with their pixel size: distances are in µm (the *_mm columns"
              " of the files, and --tolerance-mm), areas in thousands of µm² (the *_ml columns)")
    elif result.unit == "mixed":
        print("medseg: warning: some reference pictures state a pixel size (µm) and some do not (pixels): their"
              " distances are not in one unit; evaluate them apart", file=sys.stderr)
    for line in empty_mask_notes(result.per_case, args.worst_mm):
        print(line)
    if result.outside_fov:  # not the model's misses: the prediction does not cover that part of the reference
        shown = ", ".join(f"{case} ({n} of {total} voxels)" for case, (n, total) in list(result.outside_fov.items())[:5])
        more = ", ..." if len(result.outside_fov) > 5 else ""
        print(f"medseg: warning: {len(result.outside_fov)} case(s) have labelled reference voxels outside the "
              f"prediction's field of view, scored as missed: {shown}{more}; predict on the reference's whole image",
              file=sys.stderr)
    if result.missing:
        print(f"{len(result.missing)} missing prediction(s) scored as empty: {', '.join(result.missing)}")
    if result.not_predicted:
        shown = ", ".join(result.not_predicted[:5]) + (", ..." if len(result.not_predicted) > 5 else "")
        print(f"{len(result.not_predicted)} reference case(s) without a prediction left out (--predicted-only): {shown}")
    if result.unmatched:
        shown = ", ".join(result.unmatched[:5]) + (", ..." if len(result.unmatched) > 5 else "")
        print(f"{len(result.unmatched)} prediction file(s) match no reference case, not scored: {shown}")
    for name in result.summary:
        rows = [case[name] for case in result.per_case.values() if name in case]
        if rows and all(r["flag"] == "both empty" for r in rows):
            values = "+".join(str(v) for v in classes[name]) if classes else name
            print(f"medseg: warning: class '{name}' (label {values}) is empty in every reference and prediction;"
                  " its Dice 1 and distances 0 are the both-empty rule, not a result: check --labels", file=sys.stderr)
    files = result.files
    print(f"wrote {files['csv']}, {files['json']} and {files['boxplot']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
