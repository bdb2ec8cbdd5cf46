"""INT8 calibration of ``medseg.export --int8``: moving-average against plain min/max ranges, over several seeds.

The export's INT8 model is refused when the validation Dice of any class falls by more than
``bundle.int8_max_dice_loss`` (0.005; issue 18's target). This script quantises a finished run's network the
way the export does (``medseg.bundle.int8.quantise``: ONNX Runtime ``quantize_static``, QDQ, per-channel int8
weights, symmetric int8 activations) on ``--patches`` training patches drawn with each of ``--seeds``, with the
activation ranges as moving averages of the patches' min/max (medseg's default) and as their extremes, and
prints the validation Dice loss per class against fp32 (the run's validation cases, through the prediction
chain, OpenVINO as ``medseg.predict --int8`` runs it) and how many seeds stay within the limit.

    .venv/bin/python benchmarks/bench_int8_calibration.py --run runs/liver/RUN [--patches 200] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medseg.bundle.int8 import quantise, validation_dice  # noqa: E402
from medseg.bundle.onnx import export_onnx  # noqa: E402
from medseg.config import TaskConfig  # noqa: E402
from medseg.engine.resume import STATE, read_state  # noqa: E402
from medseg.inference import torch_forward  # noqa: E402
from medseg.inference.runtimes import INT8_ENGINE, build_engine  # noqa: E402
from medseg.networks import build_network  # noqa: E402
from medseg.transforms import input_channels  # noqa: E402
from medseg.workflows.train import read_cases  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import need, run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished training run directory")
    p.add_argument("--patches", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    need(args.run, "--run", "folder", "a finished training run")
    for part in ("config.yaml", "cases.json", "checkpoints/best.pt"):
        need(args.run / part, "--run", "file", "a finished training run holds it")
    torch.set_num_threads(args.threads)
    cfg = TaskConfig.from_dict(yaml.safe_load((args.run / "config.yaml").read_text()), source="config.yaml")
    cwd = read_state(args.run).get("cwd") if (args.run / STATE).is_file() else None
    train, val = read_cases(args.run, cwd)
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
    net.load_state_dict(torch.load(args.run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True))
    net.eval()
    limit = float(cfg.bundle.int8_max_dice_loss)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        export_onnx(net, models / "model.onnx", list(cfg.training.patch_size), input_channels(cfg))
        fp32 = validation_dice(cfg, {"fp32": torch_forward(copy.deepcopy(net))}, val)["fp32"]
        print(f"fp32 validation Dice: {', '.join(f'{c} {d:.4f}' for c, d in fp32.items())}; {args.patches} patches, "
              f"limit {limit}", flush=True)
        for moving in (True, False):
            name = "moving-average min/max" if moving else "min/max extremes"
            worst = []
            for seed in args.seeds:
                quantise(models, cfg, train, args.patches, seed=seed, moving_average=moving)
                forward = build_engine(INT8_ENGINE, net, models, int8=True).forward
                dice = validation_dice(cfg, {"int8": forward}, val)["int8"]
                loss = {c: fp32[c] - dice[c] for c in fp32}
                worst.append(max(loss.values()))
                print(f"{name}, seed {seed}: Dice loss " + ", ".join(f"{c} {v:.4f}" for c, v in loss.items()),
                      flush=True)
            kept = sum(w <= limit for w in worst)
            print(f"{name}: worst-class loss {min(worst):.4f}-{max(worst):.4f}, {kept} of {len(worst)} seeds within "
                  f"{limit}", flush=True)


if __name__ == "__main__":
    run(main)
