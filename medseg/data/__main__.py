"""``python -m medseg.data check DATASET_OR_TASK``: dataset integrity report; exit 1 when a case has a problem.

Checks every case: files readable, image channels and label on the same grid (both geometries shown
otherwise), label values the task declares, empty labels, NaN/inf in floating-point images; then sums
up dimensions, orientations, spacing, shapes and label values. Geometry is read from headers.

Example:
    python -m medseg.data check liver --data-dir data
    python -m medseg.data check data/Task03_Liver
    python -m medseg.data check my_pngs/ --layout folders --json report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="integrity report of a dataset")
    check.add_argument("target", help="a task name or pipeline YAML, or a dataset folder / CSV file")
    check.add_argument("--data-dir", type=Path, help="where task datasets live (default ./data)")
    check.add_argument("--layout", choices=("msd", "nnunet", "csv", "folders"),
                       help="layout of a dataset path (default: detected)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a task config key (with a task target)")
    check.add_argument("--json", type=Path, help="also write the report as JSON here")
    check.add_argument("--skip-bad", action="store_true",
                       help="accepted for symmetry with training: bad cases are always listed, never stop the check")
    check.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _path_config(root: Path, layout: str | None) -> tuple[dict[str, Any], set[int] | None]:
    """A minimal config for a dataset given as a path; expected labels from its dataset.json when it has one."""
    from medseg.data.layouts import detect_layout
    from medseg.data.msd import read_manifest

    layout = layout or detect_layout(root)
    expected: set[int] | None = None
    labels: dict[str, int] = {"background": 0}
    if layout in ("msd", "nnunet"):
        declared = read_manifest(root / "dataset.json").get("labels")
        if isinstance(declared, dict):
            try:
                if layout == "msd":
                    labels = {str(name): int(value) for value, name in declared.items()}
                else:
                    labels = {str(name): int(value) for name, value in declared.items() if not isinstance(value, list)}
            except (TypeError, ValueError) as err:
                raise MedsegError(f"{root / 'dataset.json'}: 'labels' must pair names with integer values ({err})") from err
            expected = set(labels.values())
    cfg = {"data": {"layout": layout, "labels": labels, "label_map": {}, "val_fraction": 0.2, "skip_bad": True}}
    return cfg, expected


def check(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medseg.data.check import check_case, summarise
    from medseg.data.layouts import _detect_255_masks, all_cases

    target = Path(args.target)
    if target.exists() and target.suffix.lower() not in (".yaml", ".yml"):
        cfg, expected = _path_config(target, args.layout)
        root = target
    else:
        from medseg.config import load_config
        from medseg.train import locate_dataset

        cfg = load_config(args.target, args.overrides)
        if args.layout:
            cfg["data"]["layout"] = args.layout
        root = locate_dataset(cfg, args.data_dir or Path("data"), explicit=args.data_dir is not None)
        expected = set(cfg["data"]["labels"].values())
    cases = all_cases(cfg, root)
    _detect_255_masks(cfg, cases)
    label_map = {int(k): int(v) for k, v in (cfg["data"].get("label_map") or {}).items()}
    print(f"checking {len(cases)} case(s) in {root} (layout {cfg['data']['layout']})", flush=True)
    results = []
    for case in cases:
        result = check_case(case, expected, label_map)
        results.append(result)
        for problem in result.problems:
            print(f"BAD {result.case}: {problem}", flush=True)
    lines = summarise(results)
    if label_map:
        lines.append(f"label values mapped on reading: {label_map}")
    print("\n".join(lines))
    bad = [r.case for r in results if r.problems]
    print(f"{'FAILED' if bad else 'OK'}: {len(bad)} of {len(results)} case(s) with problems"
          + (f" ({', '.join(bad[:20])}{' ...' if len(bad) > 20 else ''})" if bad else ""))
    if args.json:
        from medseg.fileio import atomic_write_text

        report = {"root": str(root), "layout": cfg["data"]["layout"], "summary": lines, "bad_cases": bad,
                  "cases": [{"case": r.case, "problems": r.problems, "shape": list(r.shape), "spacing": list(r.spacing),
                             "orientation": r.axcodes, "label_values": r.label_values} for r in results]}
        atomic_write_text(args.json, json.dumps(report, indent=1))
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    return run_cli(check, argv)


if __name__ == "__main__":
    raise SystemExit(main())
