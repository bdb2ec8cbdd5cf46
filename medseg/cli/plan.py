"""``python -m medseg.plan DATASET``: plan spacing, patch, network, batch, normalisation and schedule from the
data and this machine; write a commented pipeline YAML, plan.json and fingerprint.json.

Example:
    python -m medseg.plan data/lits_sample --modality CT --labels background=0,liver=1,tumour=2 --budget-minutes 15
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.cli import minutes
from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.plan", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="dataset folder (MSD, nnU-Net raw, images/+labels/) or a CSV")
    parser.add_argument("--modality", choices=["CT", "MR", "XR", "microscopy"],
                        help="default: dataset.json's, else guessed from the intensities")
    parser.add_argument("--labels", metavar="NAME=VALUE,...", help="label values (default: dataset.json's, else"
                        " the values found)")
    parser.add_argument("--budget-minutes", type=minutes(), default=15.0, metavar="M",
                        help="training time budget on this machine (default 15)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where training will run")
    parser.add_argument("--network", default="resunet", help="network family (any registry name; default resunet)")
    parser.add_argument("--out", type=Path, metavar="YAML", help="pipeline YAML to write (default pipelines/<task>.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing torch and MONAI
    from medseg.workflows import plan

    outcome = plan.run(args.dataset, modality=args.modality, labels=args.labels, budget_minutes=args.budget_minutes,
                       device=args.device, network=args.network, out=args.out)
    for key, decision in outcome.plan.decisions.items():
        print(f"{key}: {decision.value}  # {decision.reason}")
    print(f"Wrote {outcome.yaml}, {outcome.plan_json.name}, {outcome.fingerprint_json.name}"
          f" (plan {outcome.plan.hash})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
