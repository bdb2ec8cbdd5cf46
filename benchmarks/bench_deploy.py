"""Deployment on CPU: each engine and precision against PyTorch fp32 in the same run (issue 18).

For one medseg bundle (default ``bundles/liver_ct_segmentation``) and each of torch fp32, onnxruntime fp32,
openvino fp32 and bf16 (when installed), onnxruntime INT8 and openvino INT8 (when the bundle holds ``model_int8.onnx``):

- forward time of one sliding-window batch (``sw_batch_size`` windows of the training patch; median of repeats),
- whole-CT prediction time through the one chain (median of ``--ct-repeats`` fresh processes; synthetic
  512x512x100 CT, 0.8 x 0.8 x 2.5 mm, as ``bench_predict.py``), and the mask's Dice against torch fp32's;
  beside it the engine's load in that process (``build_engine``: reading and compiling the model, which for
  OpenVINO includes compiling the sliding window's shape),
- peak resident memory of that prediction (a fresh process per engine, ``ru_maxrss``),
- validation Dice per class on the run's validation cases (``--run RUN_DIR``: its ``cases.json``),

and each figure's ratio to torch fp32. ``--student BUNDLE`` (a ``python -m medseg.distill`` bundle) adds the
student's torch forward time on the same batch and its validation Dice; ``--startup IMAGE`` times whole
``python -m medseg.predict`` processes on one image (torch engine, median of 3) beside nnU-Net v2's
``nnUNetv2_predict`` figure of issue 18 (19.7 s without TTA, measured by the issue's author, not here).
Threads: ``--threads`` (default 2) for torch and the runtimes alike. Targets: INT8 forward <= 0.5x torch fp32 with
validation Dice within 0.005; the fastest engine's whole CT <= 0.5x; the student's forward <= 0.3x the teacher's
with liver Dice >= 0.92; start-up <= 0.4x nnU-Net's.

    .venv/bin/python benchmarks/bench_deploy.py [--bundle bundles/liver_ct_segmentation] [--run runs/liver/...]
        [--student bundles/liver_ct_segmentation_light_unet] [--startup IMAGE] [--threads 2] [--repeats 5] [--ct-repeats 3] [--skip-ct]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medseg.bundle.load import load_bundle  # noqa: E402
from medseg.bundle.versions import resolve  # noqa: E402
from medseg.evaluation.classes import class_dice  # noqa: E402
from medseg.inference import run_case  # noqa: E402
from medseg.inference.runtimes import INT8_FILE, build_engine, window_input  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _cli import check_run, need, positive, run  # noqa: E402
from bench_predict import synthetic_ct  # noqa: E402

#: nnUNetv2_predict on the sample's 128x128x40 validation volume without TTA: issue 18's figure (its author's run)
NNUNET_PREDICT_S = 19.7


def variants(bundle: Path) -> list[tuple[str, str, bool]]:
    """(label, engine, int8) for every runnable combination."""
    import importlib.util

    out = [("torch fp32", "torch", False), ("onnxruntime fp32", "onnxruntime", False)]
    has_ov = importlib.util.find_spec("openvino") is not None
    if has_ov:
        out += [("openvino fp32", "openvino", False), ("openvino bf16", "openvino-bf16", False)]
    if (bundle / "models" / INT8_FILE).is_file():
        out.append(("onnxruntime int8", "onnxruntime", True))
        if has_ov:
            out.append(("openvino int8", "openvino", True))
    return out


def forward_time(forward, batch: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        forward(batch)  # warm-up (graph optimisation, first allocations)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            forward(batch)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def child(args: argparse.Namespace) -> None:
    """One engine's whole-CT prediction in this process: prints seconds, peak RSS (MB) and writes the mask."""
    torch.set_num_threads(args.threads)
    loaded = load_bundle(args.bundle, torch.device("cpu"))
    t = time.perf_counter()
    forward = build_engine(args.engine, loaded.network, loaded.root / "models", int8=args.int8,
                           window=window_input(loaded.chain)).forward
    load = time.perf_counter() - t
    t = time.perf_counter()
    pred = run_case(loaded.chain, forward, {"image": str(args.ct)})
    seconds = time.perf_counter() - t
    np.save(args.mask, pred[0].numpy().astype(np.uint8))
    print(json.dumps({"seconds": seconds, "load_seconds": load, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/liver_ct_segmentation"))
    p.add_argument("--run", type=Path, help="the bundle's training run (validation cases in its cases.json)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=positive, default=5)
    p.add_argument("--ct-repeats", type=positive, default=3, help="whole-CT predictions per engine, a fresh process "
                   "each; the median is reported (default 3)")
    p.add_argument("--skip-ct", action="store_true", help="leave out the 512x512x100 CT (forward and Dice only)")
    p.add_argument("--student", type=Path, help="a distilled student bundle: its forward time and validation Dice")
    p.add_argument("--startup", type=Path, help="an image: whole python -m medseg.predict processes on it")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--int8", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ct", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    need(args.run, "--run", "folder", "the bundle's training run")
    need(args.run and args.run / "cases.json", "--run", "file", "the run's list of cases")
    need(args.student, "--student", "folder", "a python -m medseg.distill bundle")
    need(args.startup, "--startup", "file", "an image, e.g. data/lits_sample/imagesTr/lits_sample_val.nii.gz")
    torch.set_num_threads(args.threads)
    bundle = resolve(args.bundle)
    loaded = load_bundle(bundle, torch.device("cpu"))
    cfg = loaded.cfg
    patch = list(cfg.training.patch_size)
    batch = torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(0))  # sw_batch_size 2 (inferer_def)
    classes = cfg.evaluation.classes
    val = []
    if args.run is not None:
        from monai.transforms import LoadImage

        from medseg.data.labelmaps import mapped_labels

        loader = LoadImage(image_only=True, ensure_channel_first=True)
        for case in json.loads((args.run / "cases.json").read_text())["val"]:
            ref = mapped_labels(loader(case["label"])[0].numpy(), cfg.effective_label_map())
            val.append((case["image"], ref))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ct = Path(tmp) / "ct.nii.gz"
        if not args.skip_ct:
            synthetic_ct(ct)
        masks, val_masks = {}, {}
        for label, engine, int8 in variants(bundle):
            forward = build_engine(engine, loaded.network, bundle / "models", int8=int8).forward
            row = {"variant": label, "forward_s": forward_time(forward, batch, args.repeats)}
            if val:
                scores = {c: [] for c in classes}
                val_masks[label] = [run_case(loaded.chain, forward, {"image": image})[0].numpy() for image, _ in val]
                for pred, (_, ref) in zip(val_masks[label], val):
                    for c, members in classes.items():
                        scores[c].append(class_dice(pred, ref, list(members)))
                row["val_dice"] = {c: float(np.mean(v)) for c, v in scores.items()}
                # the same masks as torch's on the real validation cases (the CT below is synthetic)
                row["val_dice_vs_torch"] = {c: float(np.mean([class_dice(p, t, list(m)) for p, t in
                                                              zip(val_masks[label], val_masks["torch fp32"])]))
                                            for c, m in classes.items()}
            if not args.skip_ct:
                mask = Path(tmp) / f"{label.replace(' ', '_')}.npy"
                cmd = [sys.executable, __file__, "--child", "--bundle", str(bundle), "--engine", engine,
                       "--threads", str(args.threads), "--ct", str(ct), "--mask", str(mask)] + (["--int8"] if int8 else [])
                runs = [json.loads(check_run(cmd, f"{label}: the whole-CT prediction").stdout.strip()
                                   .splitlines()[-1]) for _ in range(args.ct_repeats)]
                row.update({"seconds": statistics.median(r["seconds"] for r in runs),
                            "seconds_all": [round(r["seconds"], 3) for r in runs],
                            "load_seconds": statistics.median(r["load_seconds"] for r in runs),
                            "peak_mb": max(r["peak_mb"] for r in runs)})
                masks[label] = np.load(mask)
                ref = masks["torch fp32"]
                row["ct_dice_vs_torch"] = {c: class_dice(masks[label], ref, list(m)) for c, m in classes.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)

    student = None
    if args.student is not None:  # the student's torch forward beside the teacher's, interleaved (the same load)
        sloaded = load_bundle(resolve(args.student), torch.device("cpu"))
        teacher_fwd = build_engine("torch", loaded.network, None).forward
        student_fwd = build_engine("torch", sloaded.network, None).forward
        t_times, s_times = [], []
        with torch.no_grad():
            teacher_fwd(batch), student_fwd(batch)
            for _ in range(args.repeats):
                for fwd, times in ((teacher_fwd, t_times), (student_fwd, s_times)):
                    t = time.perf_counter()
                    fwd(batch)
                    times.append(time.perf_counter() - t)
        student = {"network": sloaded.cfg.network.name, "forward_s": statistics.median(s_times),
                   "teacher_forward_s": statistics.median(t_times)}
        if val:
            student["val_dice"] = {c: float(np.mean([class_dice(run_case(sloaded.chain, student_fwd, {"image": image})[0]
                                                          .numpy(), ref, list(m)) for image, ref in val]))
                                   for c, m in classes.items()}
        print(json.dumps(student), flush=True)
    startup = None
    if args.startup is not None:  # whole processes, as a user runs one case
        times = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                check_run([sys.executable, "-m", "medseg.predict", "--bundle", str(bundle.resolve()), "--input",
                           str(args.startup.resolve()), "--output", out], "python -m medseg.predict", cwd=ROOT)
                times.append(time.perf_counter() - t)
        startup = statistics.median(times)
        print(json.dumps({"startup_s": times}), flush=True)

    base = rows[0]
    print(f"\n{bundle.name} ({cfg.network.name}, patch {patch}), {args.threads} threads, "
          f"{torch.__version__.split('+')[0]} torch")
    head = ("| engine | forward / batch (s) | x torch | whole CT (s) | x torch | engine load (s) | peak MB |"
            " CT Dice vs torch | val Dice vs torch | val Dice |")
    print(head)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ct_s = (f"{r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f} | {r['load_seconds']:.2f}" if "seconds" in r
                else "- | - | -")
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        ctd = ", ".join(f"{v:.4f}" for v in r.get("ct_dice_vs_torch", {}).values()) or "-"
        vtd = ", ".join(f"{v:.4f}" for v in r.get("val_dice_vs_torch", {}).values()) or "-"
        vd = ", ".join(f"{c} {v:.4f}" for c, v in r.get("val_dice", {}).items()) or "-"
        print(f"| {r['variant']} | {r['forward_s']:.3f} | {r['forward_s'] / base['forward_s']:.2f} | {ct_s} | {peak} |"
              f" {ctd} | {vtd} | {vd} |")
    if student is not None:
        vd = ", ".join(f"{c} {v:.4f}" for c, v in student.get("val_dice", {}).items()) or "-"
        print(f"\nstudent {student['network']} (torch fp32): forward {student['forward_s']:.3f} s per batch, "
              f"{student['forward_s'] / student['teacher_forward_s']:.2f}x the teacher's "
              f"{student['teacher_forward_s']:.3f} s (interleaved); val Dice {vd}")
    if startup is not None:
        print(f"\nwhole python -m medseg.predict on {args.startup.name}: {startup:.1f} s (median of 3), "
              f"{startup / NNUNET_PREDICT_S:.2f}x nnU-Net v2's {NNUNET_PREDICT_S} s (issue 18's figure, not measured here)")


if __name__ == "__main__":
    run(main)
