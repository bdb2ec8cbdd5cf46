"""End-to-end prediction time for one 512x512x100 CT on this machine, and the share outside the network.

Builds a synthetic abdominal-like CT (0.8 x 0.8 x 2.5 mm), runs ``medseg.predict``'s per-case path (the
prediction chain, the bundle's inference.json's: load, preprocess, sliding windows, invert, post-process;
then write NIfTI) with the liver task's network,
and times the network's forward passes separately. Weights do not change the time, so a bundle is
used when given and an untrained network of the same shape otherwise. Target (bundle issue): the
share outside the forward passes is at most 30 %. Baseline in the same run (``--baseline``): the same chain with
MONAI's own steps where medseg's chain has faster ones (NibabelReader, ScaleIntensityRanged, Invertd + AsDiscreted,
KeepLargestConnectedComponentd), so the outside time is compared under the same machine load.

    .venv/bin/python benchmarks/bench_predict.py [--bundle bundles/liver_ct_segmentation] [--tta] [--repeats 3]
        [--baseline]
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
from medseg.data.nifti import READER_PATH
from medseg.inference import build_chain, chain_from_config, inference_spec, run_case, torch_forward
from medseg.inference.chain import local_targets
from medseg.networks import build_network

from _cli import positive, run


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


def monai_steps_chain(cfg):
    """The prediction chain with MONAI's own steps in place of medseg's faster ones (the baseline)."""
    spec = inference_spec(cfg)
    for step in spec["preprocessing"]["transforms"]:
        if step["_target_"] == "LoadImaged":
            step["reader"] = [r for r in step["reader"] if r != READER_PATH]  # NIfTI: MONAI's NibabelReader
        if step["_target_"] == "OnePassScaleIntensityRanged":
            step["_target_"] = "ScaleIntensityRanged"
    post = []
    for step in spec["postprocessing"]["transforms"]:
        if step["_target_"] == "InvertToLabelsd":
            post += [{"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                      "nearest_interp": False, "to_tensor": True},
                     {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "dtype": "$torch.uint8"}]
        elif step["_target_"] == "KeepLargestComponentd":
            post.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
                         "applied_labels": step["applied_labels"], "independent": False})
        else:
            post.append(step)
    spec["postprocessing"]["transforms"] = post
    return chain_from_config(local_targets(spec), chain_in_channels(cfg))


def chain_in_channels(cfg) -> int:
    from medseg.transforms import input_channels

    return input_channels(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a medseg bundle (default: untrained liver network)")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeats", type=positive, default=3, help="cases predicted in a row (the first is cold)")
    parser.add_argument("--baseline", action="store_true", help="also time MONAI's own steps, alternating")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.bundle:
        from medseg.bundle.load import load_bundle

        bundle = load_bundle(args.bundle, torch.device("cpu"))
        cfg, chain, net = bundle.cfg, bundle.chain, bundle.network
    else:
        cfg = load_config("liver")
        net = build_network(cfg.network, 1, len(cfg.data.labels)).eval()
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
    chains = {"medseg": chain}
    if args.baseline:
        chains["MONAI steps"] = monai_steps_chain(cfg)
    print(f"{'chain':>11} {'case':>4} {'end to end s':>12} {'forward s':>9} {'calls':>5} {'outside s':>9} {'outside':>7}")
    shares = {name: [] for name in chains}
    outsides = {name: [] for name in chains}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "ct.nii.gz"
        synthetic_ct(source)
        for case in range(args.repeats):
            for name, ch in chains.items():  # alternating: both see the same machine load
                forward.update(seconds=0.0, calls=0)
                t0 = time.perf_counter()
                pred = run_case(ch, torch_forward(net), {"image": str(source)}, "cpu", tta=args.tta)
                write_label_nifti(pred[0].numpy(), pred.affine.numpy(), Path(tmp) / "ct_seg.nii.gz", source=source)
                total = time.perf_counter() - t0
                outside = total - forward["seconds"]
                shares[name].append(outside / total)
                outsides[name].append(outside)
                print(f"{name:>11} {case + 1:>4} {total:>12.2f} {forward['seconds']:>9.2f} {forward['calls']:>5}"
                      f" {outside:>9.2f} {outside / total:>7.1%}")
    print(f"outside the forward passes: median {statistics.median(shares['medseg']):.1%} of end to end (target <= 30 %)")
    if args.baseline:
        ratio = statistics.median(outsides["medseg"]) / statistics.median(outsides["MONAI steps"])
        print(f"MONAI's steps: median {statistics.median(shares['MONAI steps']):.1%} outside; medseg's outside time is"
              f" {ratio:.2f}x theirs")


if __name__ == "__main__":
    run(main)
