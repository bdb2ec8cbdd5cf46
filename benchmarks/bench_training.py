"""Seconds per training epoch and the Dice reached, with and without bf16 and gradient accumulation, on the
liver task (the built-in LiTS sample unless data/Task03_Liver exists).

Each setting trains the same schedule in its own process (``python -m medseg.train liver``, no MLflow, no
bundle) and is compared with float32 without accumulation from the same run of this script:

- ``fp32``: the task as configured;
- ``bf16``: ``training.amp=bf16`` (autocast forward pass; on CPUs with bf16 matrix units it is faster);
- ``fp32-acc2``: half the batch, ``training.accumulation_steps=2`` (the same effective batch, half the memory);
- ``bf16-acc2``: both.

    python benchmarks/bench_training.py [--epochs 10] [--iterations 20] [--settings fp32,bf16,fp32-acc2,bf16-acc2]
        [--device cpu|cuda] [--out bench_training.json]

Reports per setting: mean seconds per training epoch (the first epoch, with caching and warm-up, and the
validating last one left out when there are others), the ratio to the first setting, the best validation mean Dice and the final liver / tumour Dice in mm space.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from _cli import need, run as cli_run  # noqa: E402

SETTINGS = {
    "fp32": [],
    "bf16": ["training.amp=bf16"],
    "fp32-acc2": ["training.accumulation_steps=2", "HALF_BATCH"],
    "bf16-acc2": ["training.amp=bf16", "training.accumulation_steps=2", "HALF_BATCH"],
}


def run(name: str, args: argparse.Namespace, work: Path, batch: int) -> dict:
    sets = ["tracking.enabled=false", "bundle.enabled=false", f"training.iterations_per_epoch={args.iterations}",
            f"training.device={args.device}", f"training.val_every={args.epochs}"]
    for item in SETTINGS[name]:
        if item == "HALF_BATCH":
            if batch % 2:
                raise SystemExit(f"training.batch_size {batch} is odd: accumulation over 2 needs an even batch")
            sets += [f"training.batch_size={batch // 2}", f"training.iterations_per_epoch={args.iterations * 2}"]
        else:
            sets.append(item)
    out = work / name
    cmd = [sys.executable, "-m", "medseg.train", "liver", "--epochs", str(args.epochs), "--output-dir", str(out),
           "--data-dir", str(args.data_dir), *[a for s in sets for a in ("--set", s)]]
    print(f"{name}: training {args.epochs} epochs ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    seconds = history["seconds"]
    per_epoch = [b - a for a, b in zip([0.0] + seconds[:-1], seconds)]
    # leave out the first epoch (warm-up) and epochs that validated, unless nothing would be left
    timed = [t for e, t in zip(history["epoch"], per_epoch) if e != 1 and e not in history["val_epoch"]] or per_epoch
    report = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {"setting": name, "s_per_epoch": round(sum(timed) / len(timed), 2),
            "best_val_mean_dice": round(report["best_val_mean_dice"], 4),
            **{f"{cls}_dice": round(entry["dice"], 4) for cls, entry in metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch at the full batch")
    parser.add_argument("--settings", default="fp32,bf16,fp32-acc2,bf16-acc2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    need(args.data_dir, "--data-dir", "folder", "the folder holding the liver dataset")
    args.data_dir = args.data_dir.resolve()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    import torch

    from medseg.config import load_config

    batch = load_config("liver").training.batch_size
    print(f"liver task, {args.epochs} epochs x {args.iterations} iterations, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results.append(run(name, args, Path(tmp), batch))
            base = results[0]["s_per_epoch"]
            results[-1]["speedup_vs_first"] = round(base / results[-1]["s_per_epoch"], 2)
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    cli_run(main)
