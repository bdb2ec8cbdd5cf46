"""Seconds per click of medseg.serve's click-guided rerun, for a 3 mm CT (about 120x100x110 voxels) and a
512x512x100 CT (0.8 x 0.8 x 2.5 mm), with the network of ``pipelines/liver_interactive.yaml``.

Weights do not change the time, so a bundle is used when given and an untrained network of the same shape
otherwise. A click reruns the network on one window around it and maps only the input voxels that window
reaches back onto the input grid (``medseg.workflows.interact.WindowedInversion``). Baseline in the same run:
the same clicks rerunning the whole preprocessed volume and the chain's whole-volume post-processing (what a
click cost before both were windowed). ``--engine openvino`` / ``onnxruntime``: the forward passes in that
runtime (the bundle's ``models/model.onnx``; without ``--bundle``, the untrained network exported to a temporary
file). Targets (issue 19): at most 1 s and 2 s per click on 2 CPU cores. The load average is printed with the
figures.

    .venv/bin/python benchmarks/bench_click.py [--bundle bundles/liver_ct_interactive] [--engine openvino]
        [--clicks 5] [--threads 2]

With ``--dice IMAGE LABEL`` (e.g. the sample's validation half, data/lits_sample/{imagesTr,labelsTr}/
lits_sample_val.nii.gz) and a trained ``--bundle``: the standard interactive benchmark instead, simulated clicks
each at the centre of the largest error region of the current liver mask (labels 1 and 2), starting from the
automatic one; liver Dice after 0, 1, 3, 5, 10 clicks and the clicks to reach 0.95. ``--oracle R [R ...]`` adds,
for the same bundle's automatic mask and the same click rule, what an ideal local correction would reach: each
click fixes every error voxel of its kind (missed or false liver) connected to it within R mm, and nothing else
(an upper bound for any correction of that reach, not a method).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.bundle.load import LoadedBundle, load_bundle
from medseg.bundle.onnx import export_onnx
from medseg.config import load_config
from medseg.errors import MedsegError
from medseg.evaluation.classes import class_dice
from medseg.inference import build_chain
from medseg.networks import build_network
from medseg.transforms import input_channels
from medseg.workflows.interact import CaseSession

from _cli import need, run as cli_run

REPO = Path(__file__).resolve().parent.parent
CASES = {"3mm_120x100x110": ((120, 100, 110), (3.0, 3.0, 3.0)), "512x512x100": ((512, 512, 100), (0.8, 0.8, 2.5))}


def synthetic_ct(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)], indexing="ij",
                          sparse=True)
    cx, cy = shape[0] * spacing[0] / 2, shape[1] * spacing[1] / 2
    body = ((x - cx) / (0.42 * 2 * cx)) ** 2 + ((y - cy) / (0.32 * 2 * cy)) ** 2 <= 1.0
    liver = ((x - 0.7 * cx) / (0.3 * cx)) ** 2 + ((y - cy) / (0.3 * cy)) ** 2 + ((z - z.max() / 2) / (z.max() / 3)) ** 2 <= 1
    image = np.where(body, 40.0, -1000.0).astype(np.float32) + np.where(liver, 60.0, 0.0)
    image += rng.normal(0, 10, image.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([*spacing, 1.0])), path)


def bundle(path: str | None, onnx_dir: Path | None = None) -> LoadedBundle:
    """The bundle at ``path``, or an untrained network of the pipeline (exported as ONNX into ``onnx_dir``/models)."""
    if path:
        return load_bundle(Path(path), torch.device("cpu"))
    cfg = load_config(str(REPO / "pipelines" / "liver_interactive.yaml"), ["training.device=cpu"])
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels)).eval()
    loaded = LoadedBundle("untrained", cfg, net, {0: "background", 1: "liver", 2: "tumour"}, build_chain(cfg))
    if onnx_dir is not None:
        (onnx_dir / "models").mkdir(parents=True, exist_ok=True)
        export_onnx(net, onnx_dir / "models" / "model.onnx", list(cfg.training.patch_size), input_channels(cfg))
        loaded = dataclasses.replace(loaded, root=onnx_dir)
    return loaded


def clicks(session: CaseSession, n: int) -> list[float]:
    centre = [s // 2 for s in session.shape]
    times = []
    for i in range(n):
        voxel = [c + 3 * i for c in centre]
        times.append(session.click(voxel, 1, positive=i % 2 == 0)["seconds"])
    return times


def dice_after_clicks(loaded: LoadedBundle, image: Path, label: Path, n: int = 10,
                      members: tuple[int, ...] = (1, 2), engine: str = "torch") -> list[float]:
    """Liver Dice after 0..n simulated clicks, each at the centre of the largest error region of the liver mask
    (``members``' union, tumour inside the liver): missed liver gets a positive click on ``members[0]``, false
    liver a negative click on the class under it. (Errors between liver and tumour are not liver errors.)"""
    from medseg.engine.interactive import simulate_session

    truth = np.isin(np.asarray(nib.load(str(label)).dataobj), members).astype(np.int64)
    session = CaseSession(loaded, "bench", image, engine=engine)

    def predict(clicks: list) -> np.ndarray:
        for *voxel, value in clicks[len(session.steps):]:
            if value:
                session.click(voxel, members[0], positive=True)
            else:
                session.click(voxel, int(session.labels[tuple(voxel)]), positive=False)
        return np.isin(session.labels, members).astype(np.int64)

    _, preds = simulate_session(predict, truth, n)
    return [class_dice(p, truth, [1]) for p in preds]


def oracle_after_clicks(loaded: LoadedBundle, image: Path, label: Path, radius: float, n: int = 10,
                        members: tuple[int, ...] = (1, 2)) -> list[float]:
    """Liver Dice after 0..n clicks of an ideal correction within ``radius`` mm (see the module's docstring)."""
    from scipy import ndimage

    from medseg.engine.interactive import largest_error_click

    truth = np.isin(np.asarray(nib.load(str(label)).dataobj), members).astype(np.int64)
    session = CaseSession(loaded, "bench", image)
    pred = np.isin(session.labels, members).astype(np.int64)
    grid = np.indices(pred.shape, dtype=np.float32)
    clicks: list = []
    scores = [class_dice(pred, truth, [1])]
    for _ in range(n):
        click = largest_error_click(pred, truth, clicks)
        if click is not None:
            clicks.append(click)
            near = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, click[:3], session.spacing)) <= radius ** 2
            regions, _ = ndimage.label((pred != truth) & (truth == click[3]) & near)
            pred[regions == regions[tuple(click[:3])]] = click[3]
        scores.append(class_dice(pred, truth, [1]))
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="a bundle (default: an untrained network of liver_interactive.yaml; weights do "
                   "not change the time)")
    p.add_argument("--clicks", type=int, default=5, help="timed clicks per case (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dice", nargs=2, type=Path, metavar=("IMAGE", "LABEL"),
                   help="instead of the timing: the trained --bundle's liver Dice after 0-10 simulated clicks")
    p.add_argument("--engine", choices=("torch", "onnxruntime", "openvino"), default="torch")
    p.add_argument("--oracle", nargs="+", type=float, metavar="MM", help="with --dice: an ideal correction's reach")
    p.add_argument("--radius", type=float, help="interactive.correction_radius (mm) for a bundle without guidance")
    args = p.parse_args()
    if args.dice:
        if not args.bundle:
            raise MedsegError("--dice: give the trained --bundle to score (an untrained network's clicks mean nothing)")
        need(args.dice[0], "--dice IMAGE")
        need(args.dice[1], "--dice LABEL")
    elif args.oracle:
        raise MedsegError("--oracle: only with --dice IMAGE LABEL")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    loaded = bundle(args.bundle, tmp if args.engine != "torch" and not args.bundle else None)
    print(f"engine {args.engine}, {args.threads} threads, load average at the start "
          + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)")
    if args.radius is not None and loaded.cfg is not None:
        loaded.cfg.interactive.correction_radius = args.radius
    if args.dice:
        scores = dice_after_clicks(loaded, *args.dice, engine=args.engine)
        reach = next((i for i, d in enumerate(scores) if d >= 0.95), None)
        print("liver Dice after " + ", ".join(f"{k} clicks {scores[k]:.3f}" for k in (0, 1, 3, 5, 10))
              + f"; Dice 0.95 {'after ' + str(reach) + ' clicks' if reach is not None else 'not reached in 10'}")
        for radius in args.oracle or []:
            ideal = oracle_after_clicks(loaded, *args.dice, radius)
            print(f"ideal correction within {radius:g} mm: " + ", ".join(f"{k} clicks {ideal[k]:.3f}" for k in (0, 1, 3, 5, 10)))
        return
    for name, (shape, spacing) in CASES.items():
        path = tmp / f"{name}.nii.gz"
        synthetic_ct(path, shape, spacing)
        started = time.perf_counter()
        session = CaseSession(loaded, "bench", path, engine=args.engine)
        opened = time.perf_counter() - started
        windowed = clicks(session, args.clicks)
        full = CaseSession(loaded, "bench", path, window=list(session.logits.shape[1:]), engine=args.engine)
        full.inversion = None  # the baseline: the chain's post-processing of the whole volume per click
        whole = clicks(full, args.clicks)
        print(f"{name}: grid {list(session.logits.shape[1:])}, open + automatic {opened:.2f} s; per click median "
              f"{statistics.median(windowed):.2f} s (window {session.window}, max {max(windowed):.2f} s) vs "
              f"{statistics.median(whole):.2f} s whole volume: ratio "
              f"{statistics.median(windowed) / statistics.median(whole):.2f}", flush=True)
    print("load average at the end " + " / ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    cli_run(main)
