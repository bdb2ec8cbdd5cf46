"""Training-step speed and memory of the liver network under each ``training.amp`` setting, on CPU or GPU.

Runs the SupervisedTrainer training builds (``medseg.engine.builders``: the liver task's network, loss,
optimiser, precision and clipping) on random liver-sized patches (liver.yaml: 64 x 96 x 96 voxels, batch 2)
and reports, per
setting, seconds per step and peak GPU memory, as ratios to float32 in the same run. It also checks what
only a GPU can show: fp16 runs with a gradient scaler (clipping unscales first), the scaler's state
survives a checkpoint round trip, and activation checkpointing lowers peak memory.

    python benchmarks/bench_amp_step.py [--device cuda] [--steps 20] [--settings none,bf16,fp16,none+ckpt]

Reads no data (random patches), so it runs on a GPU machine without any dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ignite.engine import Events  # noqa: E402

from medseg.config import load_config  # noqa: E402
from medseg.engine import builders  # noqa: E402
from medseg.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from medseg.errors import MedsegError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import positive, run as cli_run  # noqa: E402


def run(setting: str, device: torch.device, steps: int, patch: list[int], batch: int) -> dict:
    amp, _, extra = setting.partition("+")
    cfg = load_config("liver", [f"training.amp={amp}", "training.epochs=1", "training.grad_clip=1.0",
                                "training.accumulation_steps=1", f"training.device={device.type}",
                                f"training.activation_checkpointing={str(extra == 'ckpt').lower()}"])
    torch.manual_seed(0)
    net, model = builders.build_model(cfg, device)
    g = torch.Generator().manual_seed(1)
    batches = [{"image": torch.rand(batch, 1, *patch, generator=g),
                "label": torch.randint(0, 3, (batch, 1, *patch), generator=g)} for _ in range(4)]
    data = [batches[i % 4] for i in range(steps + 2)]
    opt, _ = builders.optimiser_and_schedule(model.parameters(), cfg)
    trainer = builders.build_trainer(cfg, model, data, opt, builders.training_loss(cfg), device, decollate=False)
    losses, marks = [], {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        losses.append(float(engine.state.output["loss"]))
        if engine.state.iteration == 2:  # after warm-up (cuDNN autotuning, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            marks["t0"] = time.perf_counter()

    trainer.run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - marks["t0"]) / steps
    out = {"setting": setting, "s_per_step": round(seconds, 4), "loss_first": losses[0], "loss_last": losses[-1],
           "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
           "grad_norm_last": round(float(trainer.state.grad_norm), 4)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if trainer.scaler is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "last.pt"
            save_checkpoint(path, {"scaler": trainer.scaler.state_dict()})
            restored = load_checkpoint(path)["scaler"]
        out["scaler_scale"] = float(trainer.scaler.get_scale())
        out["scaler_round_trip"] = restored == trainer.scaler.state_dict()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=positive, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", default="64,96,96")
    parser.add_argument("--settings", default="")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = args.settings.split(",") if args.settings else (
        ["none", "bf16", "fp16", "none+ckpt", "bf16+ckpt"] if device.type == "cuda" else ["none", "bf16"])
    try:
        patch = [int(v) for v in args.patch.split(",")]
    except ValueError:
        raise MedsegError(f"--patch {args.patch}: give the patch as comma-separated integers, e.g. 64,96,96") from None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; patch {patch}, batch {args.batch}, {args.steps} timed steps; torch {torch.__version__}")
    results = [run(s, device, args.steps, patch, args.batch) for s in settings]
    base = results[0]
    for r in results:
        r["speedup_vs_first"] = round(base["s_per_step"] / r["s_per_step"], 2)
        if "peak_gib" in r:
            r["memory_vs_first"] = round(r["peak_gib"] / base["peak_gib"], 2)
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "results": results}, indent=1))


if __name__ == "__main__":
    cli_run(main)
