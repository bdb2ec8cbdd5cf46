"""End-to-end prediction time for one 512x512x100 CT on this machine, and the share outside the network.

Builds a synthetic abdominal-like CT (0.8 x 0.8 x 2.5 mm), runs ``medseg.predict``'s per-case path (the
prediction chain, the bundle's inference.json's: load, preprocess, sliding windows, invert, post-process;
then write NIfTI) with the liver task's network,
and times the network's forward passes separately. Weights do not change the time, so a bundle is
used when given and an untrained network of the same shape otherwise. Target (bundle issue): the
share outside the forward passes is at most 30 %.

    .venv/bin/python benchmarks/bench_predict.py [--bundle bundles/liver_ct_segmentation] [--tta] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg.config import load_config
from medseg.data.labelmaps import write_label_nifti
from medseg.inference import build_chain, run_case, torch_forward
from medseg.networks import build_network


def synthetic_ct(path: Path) -> None:
    shape, spacing = (512, 512, 100), (0.8, 0.8, 2.5)
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    body = ((x - 205) / 170) ** 2 + ((y - 205) / 130) ** 2 <= 1.0
    liver = ((x - 150) / 80) ** 2 + ((y - 190) / 60) ** 2 + ((z - 125) / 90) ** 2 <= 1.0
    ct = np.where(body, 40.0, -1000.0) + np.where(liver & body, 60.0, 0.0)
    ct = (ct + rng.normal(0, 15, shape)).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a medseg bundle (default: untrained liver network)")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="cases predicted in a row (the first is cold)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.bundle:
        from medseg.bundle.load import load_bundle

        bundle = load_bundle(args.bundle, torch.device("cpu"))
        chain, net = bundle.chain, bundle.network
    else:
        cfg = load_config("liver")
        net = build_network(cfg["network"], 1, len(cfg["data"]["labels"])).eval()
        chain = build_chain(cfg)
    forward = {"seconds": 0.0, "calls": 0}

    def before(module, inputs):
        forward["t0"] = time.perf_counter()

    def after(module, inputs, output):
        forward["seconds"] += time.perf_counter() - forward["t0"]
        forward["calls"] += 1

    net.register_forward_pre_hook(before)
    net.register_forward_hook(after)
    print(f"input 512x512x100 CT at 0.8x0.8x2.5 mm, {torch.get_num_threads()} threads, tta={args.tta}")
    print(f"{'case':>4} {'end to end s':>12} {'forward s':>9} {'calls':>5} {'outside s':>9} {'outside':>7}")
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "ct.nii.gz"
        synthetic_ct(source)
        for case in range(args.repeats):
            forward.update(seconds=0.0, calls=0)
            t0 = time.perf_counter()
            pred = run_case(chain, torch_forward(net), {"image": str(source)}, "cpu", tta=args.tta)
            write_label_nifti(pred[0].numpy(), pred.affine.numpy(), Path(tmp) / "ct_seg.nii.gz", source=source)
            total = time.perf_counter() - t0
            outside = total - forward["seconds"]
            shares.append(outside / total)
            print(f"{case + 1:>4} {total:>12.2f} {forward['seconds']:>9.2f} {forward['calls']:>5} {outside:>9.2f}"
                  f" {outside / total:>7.1%}")
    print(f"outside the forward passes: median {statistics.median(shares):.1%} of end to end (target <= 30 %)")


if __name__ == "__main__":
    main()
