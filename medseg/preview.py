"""``python -m medseg.preview TASK``: a PNG grid of training patches before and after augmentation.

The same grid training logs to MLflow (``augmentation_preview.png``): top row, patches as the training
sampler draws them from the preprocessed cases; bottom row, the same patches after the random
augmentation; labels as coloured contours. Look at it to check that the augmentation still gives
plausible anatomy.

Example:
    python -m medseg.preview liver --n 8 --out preview.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.config import available_tasks, load_config
from medseg.errors import MedsegError, run_cli


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


def _training_cases(cfg: dict, root: Path) -> list[dict]:
    from medseg.data.layouts import load_dataset

    return load_dataset(cfg, root, cfg["training"]["seed"])[0]


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.n <= 64:
        raise MedsegError(f"--n {args.n}: give between 1 and 64 patches")
    cfg = load_config(args.task, list(args.overrides))
    from medseg.train import locate_dataset, setup_logging
    from medseg.transforms import fit_preprocessing
    from medseg.transforms.preview import write_preview

    setup_logging()
    data_dir = args.data_dir or Path("data")
    root = locate_dataset(cfg, data_dir, explicit=args.data_dir is not None)
    cases = _training_cases(cfg, root)
    cfg = fit_preprocessing(cfg, cases)
    out = args.out or Path(f"{cfg['task']}_augmentation_preview.png")
    if out.suffix.lower() != ".png":
        raise MedsegError(f"--out {out}: the preview is a PNG; give a file name ending in .png")
    seed = cfg["training"]["seed"] if args.seed is None else args.seed
    write_preview(cfg, cases, out, n=args.n, seed=seed)
    print(f"wrote {out} ({args.n} patches, seed {seed})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
