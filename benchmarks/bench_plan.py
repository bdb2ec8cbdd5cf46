"""What medseg.plan decides on the built-in LiTS sample and on an anisotropic version of it (z averaged to 5 mm
slices, like thick-slice clinical CT), beside the hand-tuned ``pipelines/liver.yaml``.

Planning only (fingerprint + the measured step times of a few real training steps on this machine); the
planned runs' Dice against the hand YAML's needs the trainings themselves (15 minutes each on 2 cores):
``python -m medseg.train <printed YAML>`` and ``python -m medseg.train liver``. Run it on a quiet machine,
pinned to the cores training will get (the step times decide the patch and the schedule):

    taskset -c 0,1 .venv/bin/python benchmarks/bench_plan.py                 # 15-minute CPU budget
    .venv/bin/python benchmarks/bench_plan.py --budget-minutes 5 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medseg.config import load_config  # noqa: E402
from medseg.data import prepare_lits_sample  # noqa: E402
from medseg.plan import plan_dataset, write_plan  # noqa: E402

KEYS = ("preprocessing.spacing", "network.spatial_dims", "network.slice_mode", "training.patch_size",
        "network.strides", "network.channels", "training.batch_size", "training.amp", "training.epochs",
        "training.iterations_per_epoch", "preprocessing.window", "training.pos_neg_ratio", "augmentation.rotate_deg")


def thick_slices(sample: Path, out: Path, factor: int = 5) -> Path:
    """A copy of the sample with ``factor`` consecutive axial slices averaged into one (labels: the middle
    slice), so the z spacing is ``factor`` mm."""
    shutil.copytree(sample, out)
    for image in sorted((out / "imagesTr").glob("*.nii.gz")):
        label = out / "labelsTr" / image.name
        for path, is_label in ((image, False), (label, True)):
            nii = nib.load(path)
            arr = np.asarray(nii.dataobj)
            n = arr.shape[2] // factor * factor
            blocks = arr[:, :, :n].reshape(arr.shape[0], arr.shape[1], n // factor, factor)
            thick = blocks[..., factor // 2] if is_label else blocks.mean(axis=-1).astype(np.float32)
            affine = nii.affine.copy()
            affine[:3, 2] *= factor
            nib.save(nib.Nifti1Image(thick.astype(arr.dtype if is_label else np.float32), affine), path)
    return out


def hand_values(task: str) -> dict[str, object]:
    cfg = load_config(task).to_dict()
    out = {}
    for key in KEYS:
        section, _, name = key.partition(".")
        out[key] = cfg[section][name]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=None, help="folder for the planned YAMLs (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("medseg.plan").setLevel(logging.INFO)  # the measured attempts
    sample = prepare_lits_sample(args.data_dir)
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_plan_"))
    work.mkdir(parents=True, exist_ok=True)
    aniso = work / "lits_sample_5mm"
    if not aniso.exists():
        thick_slices(sample, aniso)
    results = {"liver.yaml (hand)": {k: (v, "hand-tuned") for k, v in hand_values("liver").items()}}
    for name, root in (("LiTS sample, 1 mm", sample), ("LiTS sample, z 5 mm", aniso)):
        started = time.perf_counter()
        plan = plan_dataset(root, modality="CT", budget_minutes=args.budget_minutes, device=args.device)
        seconds = time.perf_counter() - started
        yaml_path = write_plan(plan, work / f"{plan.task}.yaml")
        results[name] = {k: (plan.decisions[k].value, plan.decisions[k].reason) for k in KEYS if k in plan.decisions}
        print(f"\n## {name}: planned in {seconds:.0f} s -> {yaml_path} (plan {plan.hash})")
        print(f"machine: {json.dumps(plan.machine)}")
        for key, (value, reason) in results[name].items():
            print(f"- {key}: {value}  # {reason}")
    print("\n| key | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in KEYS:
        row = [str(results[col].get(key, ("-",))[0]) for col in results]
        print(f"| {key} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
