"""``python -m medseg.export RUN_DIR [--out DIR] [--int8] [--set bundle.KEY=VALUE]``: a run's bundle, again.

``python -m medseg.export RUN_DIR``: write a finished run's MONAI Bundle (again), as a new version;
``python -m medseg.export --list [--dir bundles]``: every bundle version kept.

Training exports at its end; this command redoes it from what the run directory holds: the resolved
``config.yaml``, ``checkpoints/best.pt`` and ``metrics.json``. Earlier versions are never replaced:
``bundles/<name>`` points at the latest, ``bundles/<name>-v<n>`` holds each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import MedsegError, no_folder, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="a training run directory (runs/<task>/<timestamp>)")
    parser.add_argument("--out", type=Path, help="bundle to write a new version of (default: bundles/<bundle name>)")
    parser.add_argument("--int8", action="store_true",
                        help="also models/model_int8.onnx: calibrated on the run's training patches, refused when its "
                        "validation Dice falls more than bundle.int8_max_dice_loss (default 0.005)")
    parser.add_argument("--set", action="append", default=[], metavar="bundle.KEY=VALUE",
                        help="override a bundle.* key of the run's config.yaml for this export, e.g. "
                        "--set bundle.int8_max_dice_loss=0.01 (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the bundle versions in --dir instead")
    parser.add_argument("--dir", type=Path, default=Path("bundles"), help="bundles folder for --list (default: bundles)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        # deferred: no torch import for a listing
        from medseg.bundle.versions import format_rows, list_bundles

        print(format_rows(list_bundles(args.dir)))
        return 0
    if args.run_dir is None:
        raise MedsegError("give a run directory (python -m medseg.export RUN_DIR) or --list")
    if not args.run_dir.is_dir():
        raise no_folder(args.run_dir, str(args.run_dir), "a training run directory (runs/<task>/<timestamp>)")
    # deferred: --help and --list answer without torch and MONAI
    from medseg.workflows.export import export_run

    path = export_run(args.run_dir, args.out, int8=True if args.int8 else None, overrides=args.set)
    print(f"bundle written to {path.parent / path.resolve().name} ({path} points at it)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
