"""``python -m medseg.evaluate``: score a folder of predictions against a folder of references.

Cases are matched by file name without the image suffix (``case_001.nii.gz`` ↔ ``case_001.nrrd``);
a prediction named ``<case>_seg.*`` (as MONAI bundles write them) matches ``<case>`` too. Writes
``metrics_per_case.csv``, ``metrics.json`` (mean, std, median per class) and ``metrics_boxplot.png``.

Example:
    python -m medseg.evaluate --pred runs/liver/x/predictions --ref data/Task03_Liver/labelsTr \\
        --labels liver=1,tumour=2 --tolerance-mm 2 --output eval/
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from medseg.errors import MedsegError, run_cli


def parse_labels(text: str | None) -> dict[str, list[int]] | None:
    """``liver=1+2,tumour=2`` -> ``{"liver": [1, 2], "tumour": [2]}``."""
    if not text:
        return None
    classes: dict[str, list[int]] = {}
    for item in text.split(","):
        name, _, values = item.partition("=")
        try:
            classes[name.strip()] = [int(v) for v in values.split("+")]
        except ValueError:
            raise MedsegError(f"--labels '{item}': expected NAME=VALUE or NAME=V1+V2, e.g. liver=1+2,tumour=2") from None
        if not name.strip():
            raise MedsegError(f"--labels '{item}': the class needs a name, e.g. liver=1")
    return classes


def find_cases(folder: Path, what: str) -> dict[str, Path]:
    from medseg.data.labelmaps import SUFFIXES, case_name

    if not folder.is_dir():
        raise MedsegError(f"{what} folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(SUFFIXES):
            name = case_name(path)
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


def score_case(args: tuple) -> tuple[str, dict]:
    """Worker: read one pair, bring the prediction onto the reference grid, compute every metric."""
    import numpy as np

    from medseg.data.labelmaps import onto_grid, read_labelmap
    from medseg.evaluation import evaluate_case

    case, pred_path, ref_path, classes, tolerance, resample, worst = args
    ref = read_labelmap(ref_path)
    if pred_path is None:
        pred = np.zeros_like(ref.array)
    else:
        pred = onto_grid(read_labelmap(pred_path), ref, resample, what=f"case '{case}'")
    if classes is None:
        classes = {f"label_{v}": [int(v)] for v in np.unique(ref.array) if v != 0}
    return case, evaluate_case(pred, ref.array, ref.spacing, classes, tolerance_mm=tolerance, worst_mm=worst)


def boxplot(per_case: dict, path: Path) -> None:
    """One panel per headline metric, one box per class, each case a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medseg.fileio import atomic_write_bytes

    panels = [("dice", "Dice"), ("hd95_mm", "HD95 (mm)"), ("assd_mm", "ASSD (mm)"), ("nsd", "NSD")]
    classes = list(dict.fromkeys(c for case in per_case.values() for c in case))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (key, title) in zip(axes, panels):
        data = [[float(case[c][key]) for case in per_case.values() if c in case] for c in classes]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes)
        for i, values in enumerate(data, 1):
            ax.scatter([i] * len(values), values, s=12, alpha=0.6, color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{len(per_case)} cases")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _advance(bar, case: str, done: int, total: int) -> None:
    bar.update()
    if bar.disable:  # no terminal, no bar: a line per case for logs
        print(f"[{done}/{total}] {case}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    p.add_argument("--ref", type=Path, required=True, help="folder of reference label maps")
    p.add_argument("--labels", help="classes as NAME=VALUE[+VALUE], e.g. liver=1+2,tumour=2 (default: each label)")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="tolerance for NSD and boundary F1 (mm)")
    p.add_argument("--worst-mm", type=float, help="distance given when one mask is empty (default: image diagonal)")
    p.add_argument("--resample", action="store_true", help="map predictions on another grid to the reference grid")
    p.add_argument("--missing-as-empty", action="store_true", help="score a missing prediction as an empty mask")
    p.add_argument("--output", type=Path, default=Path("evaluation"), help="output folder (default ./evaluation)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from medseg.evaluation import format_table, summarise, write_reports

    classes = parse_labels(args.labels)
    refs = find_cases(args.ref, "reference")
    preds = find_cases(args.pred, "prediction")
    matched, missing = match(preds, refs)
    if missing and not args.missing_as_empty:
        print(f"medseg: error: no prediction for {len(missing)} reference case(s): {', '.join(missing)};"
              " pass --missing-as-empty to score them as empty predictions", file=sys.stderr)
        return 1
    jobs = [(c, p, refs[c], classes, args.tolerance_mm, args.resample, args.worst_mm) for c, p in matched.items()]
    per_case: dict[str, dict] = {}
    # the bar shows on a terminal only; it is closed before any error line is printed
    with tqdm(total=len(jobs), desc="evaluating", unit="case", file=sys.stderr, disable=None) as bar:
        if args.jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(args.jobs, len(jobs))) as pool:
                for case, result in pool.map(score_case, jobs):
                    per_case[case] = result
                    _advance(bar, case, len(per_case), len(jobs))
        else:
            for job in jobs:
                case, result = score_case(job)
                per_case[case] = result
                _advance(bar, case, len(per_case), len(jobs))
    summary = summarise(per_case)
    json_path, csv_path = write_reports(per_case, summary, args.output)
    boxplot(per_case, args.output / "metrics_boxplot.png")
    print(format_table(summary))
    if missing:
        print(f"{len(missing)} missing prediction(s) scored as empty: {', '.join(missing)}")
    print(f"wrote {csv_path}, {json_path} and {args.output / 'metrics_boxplot.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
