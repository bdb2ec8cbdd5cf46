"""``python -m medseg.rank``: order unlabelled cases by the model's uncertainty, most uncertain first (CSV).

The score: mean normalised entropy of the class probabilities inside the predicted foreground. With --serve,
medseg.serve then opens on those cases (the page lists them in that order).

Example:
    python -m medseg.rank --bundle bundles/liver_ct_segmentation --input unlabelled/ --output ranking.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import run_cli
from medseg.workflows import rank, serve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.rank", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="MONAI Bundle folder (bundles/<name>) or .zip")
    p.add_argument("--input", type=Path, required=True, help="folder of unlabelled images / DICOM series")
    p.add_argument("--output", type=Path, default=Path("ranking.csv"), help="CSV to write (default ranking.csv)")
    p.add_argument("--series", metavar="UID", help="which series (SeriesInstanceUID) where a DICOM folder holds several")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--trust", action="store_true", help="allow a bundle not written by medseg to run its config code")
    p.add_argument("--serve", action="store_true", help="then serve the cases in that order (medseg.serve)")
    p.add_argument("--port", type=int, default=8000, help="--serve: port on 127.0.0.1")
    p.add_argument("--output-dir", type=Path, default=Path("corrected"), help="--serve: where saved masks go")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skipped, masks, total, done = [], [], [0], [0]

    def skip(name: str, reason: str) -> None:
        if not total[0]:  # before scoring: a mask medseg wrote beside its case, left out (not a failure)
            masks.append(name)
            print(f"medseg: {name} left out: {reason}", file=sys.stderr)
            return
        skipped.append(name)
        done[0] += 1
        print(f"medseg: case '{name}' skipped ({done[0]}/{total[0]}): {reason}", file=sys.stderr, flush=True)

    def begin(n: int) -> None:
        total[0] = n
        print(f"scoring {n} case(s) with {args.bundle}", file=sys.stderr, flush=True)

    def scored(name: str, score: float) -> None:  # a line per case: a folder of CTs takes minutes
        done[0] += 1
        print(f"scored {done[0]}/{total[0]} {name}: {score:.4f}", file=sys.stderr, flush=True)

    rows = rank.run(args.bundle, args.input, args.output, device=args.device, trust=args.trust, on_case=scored,
                    on_skip=skip, series=args.series, on_begin=begin)
    for row in rows:
        print(f"{row['rank']:>3}  {row['case']}  {row['uncertainty']:.4f}")
    print(f"wrote {args.output}" + (f"; {len(skipped)} skipped: {', '.join(skipped)}" if skipped else ""))
    if args.serve:
        serve.run(args.bundle, port=args.port, input_dir=args.input, output_dir=args.output_dir, device=args.device,
                  trust=args.trust, order=[r["case"] for r in rows])
    return 1 if skipped else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
