"""``python -m medseg.distill --teacher BUNDLE --student light_unet``: train a small student on a bundle's soft
predictions plus the labels, and export it as its own bundle.

Loss: ``distill.weight`` x T^2 x KL(teacher || student) over probabilities softened by ``distill.temperature``
(T), plus the task loss on the labels. The student keeps the teacher's task, cases and preprocessing; teacher and
student validation Dice are printed side by side and stored in the student bundle's ``metadata.json``.

Example:
    python -m medseg.distill --teacher bundles/liver_ct_segmentation --student light_unet --budget-minutes 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.cli import minutes
from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m medseg.distill", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, required=True, help="the teacher: a bundle medseg wrote")
    p.add_argument("--student", default="light_unet", help="student network name (default light_unet)")
    p.add_argument("--data-dir", type=Path, help="where the task's dataset is (default ./data)")
    p.add_argument("--budget-minutes", type=minutes(), default=10.0, help="training time of the student (default 10)")
    p.add_argument("--output-dir", type=Path, help="run folder (default runs/<task>_distill/<timestamp>)")
    p.add_argument("--int8", action="store_true", help="also an INT8 model in the student bundle (bundle.int8), "
                   "calibrated on the training cases and refused if it loses more Dice than bundle.int8_max_dice_loss")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="student config override, e.g. distill.temperature=4 (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medseg.workflows import distill  # deferred: --help answers without torch and MONAI

    out = distill.run(args.teacher, student=args.student, data_dir=args.data_dir, budget_minutes=args.budget_minutes,
                      output_dir=args.output_dir,
                      overrides=[*args.set, *(["bundle.int8=true"] if args.int8 else [])])
    for name in out.student:
        print(f"{name}: teacher Dice {out.teacher[name]['dice']:.3f}, student Dice {out.student[name]['dice']:.3f}")
    print(f"student bundle written to {out.bundle} (run {out.run_dir})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
