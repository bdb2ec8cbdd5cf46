"""``python -m medseg.preview TASK``: a PNG grid of training patches before and after augmentation.

The same grid training logs to MLflow (``augmentation_preview.png``): top row, patches as the training
sampler draws them from the preprocessed cases; bottom row, the same patches after the random
augmentation; labels as coloured contours. Look at it to check that the augmentation still gives
plausible anatomy. The body is :func:`medseg.workflows.preview.run`.

Example:
    python -m medseg.preview liver --n 8 --out preview.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.config import available_tasks
from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.preview", description=__doc__.splitlines()[0])
    parser.add_argument("task", help=f"task name in pipelines/ ({', '.join(available_tasks())}) or a path to a YAML")
    parser.add_argument("--n", type=int, default=8, help="number of patches (columns), default 8")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: <task>_augmentation_preview.png)")
    parser.add_argument("--data-dir", type=Path, help="folder holding the datasets (default: ./data)")
    parser.add_argument("--seed", type=int, help="random seed (default: training.seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set augmentation.elastic.prob=1 (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing torch and MONAI
    from medseg.workflows import preview

    path = preview.run(args.task, n=args.n, out=args.out, data_dir=args.data_dir, seed=args.seed,
                       overrides=args.overrides)
    print(f"wrote {path} ({args.n} patches" + ("" if args.seed is None else f", seed {args.seed}") + ")")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
