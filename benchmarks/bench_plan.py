"""What medseg.plan decides, and how its plans train, on the built-in LiTS sample, an anisotropic copy of it (z
averaged to 5 mm slices, like thick-slice clinical CT) and a 2D copy (axial slices as PNG), beside the
hand-tuned ``pipelines/liver.yaml`` and nnU-Net v2's own planner; and the preprocess-once disk cache against
the all-in-memory cache on ~60 synthetic CT-sized cases.

Subcommands (run each on a quiet machine, pinned to the cores training gets: the step times decide the plan):

    # the plans (fingerprint + measured step times here); writes the datasets, the plans and nnU-Net raw copies
    taskset -c 0,1 .venv/bin/python benchmarks/bench_plan.py plans --out /tmp/bench_plan --nnunet-raw /tmp/nnunet_raw
    # nnU-Net v2's planner on the same folders (its own venv: a benchmark dependency, not a medseg one)
    nnUNet_raw=/tmp/nnunet_raw nnUNet_preprocessed=/tmp/nnunet_pre nnUNet_results=/tmp/nnunet_res \\
        NNUNET/bin/nnUNetv2_plan_and_preprocess -d 501 502 503 --no_pp
    .venv/bin/python benchmarks/bench_plan.py compare --out /tmp/bench_plan --nnunet-preprocessed /tmp/nnunet_pre
    # trained runs side by side (run folders of `python -m medseg.train DATASET_DIR` / `... liver`)
    .venv/bin/python benchmarks/bench_plan.py dice "planned 1 mm=RUN_DIR" "liver.yaml=RUN_DIR" ... \
        --classes liver=1+2,tumour=2
    # preprocess once: 60 synthetic CT-sized cases, disk cache vs the in-memory cache, under /usr/bin/time -v
    .venv/bin/python benchmarks/bench_plan.py cache --out /tmp/bench_cache --cases 60
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medseg.config import load_config  # noqa: E402
from medseg.data import prepare_lits_sample  # noqa: E402
from medseg.plan import plan_dataset, write_plan  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _cli import need, run  # noqa: E402

KEYS = ("preprocessing.spacing", "network.spatial_dims", "network.slice_mode", "training.patch_size",
        "network.strides", "network.channels", "training.batch_size", "training.amp", "training.epochs",
        "training.iterations_per_epoch", "preprocessing.intensity", "preprocessing.window",
        "training.pos_neg_ratio", "augmentation.rotate_deg")
LABELS = {"background": 0, "liver": 1, "tumour": 2}
#: the benchmark's datasets: (folder under --out, nnU-Net id and name, row title)
DATASETS = (("lits_sample", 501, "LiTSSample", "LiTS sample, 1 mm"),
            ("lits_sample_5mm", 502, "LiTSSample5mm", "LiTS sample, z 5 mm"),
            ("lits_slices_png", 503, "LiTSSlicesPNG", "LiTS sample, axial PNG slices (2D)"))


# ---- the datasets


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


def png_slices(sample: Path, out: Path, window: tuple[float, float] = (-160.0, 240.0)) -> Path:
    """The sample's axial slices as a 2D ``images/`` + ``labels/`` folder: 8-bit PNGs of the CT in a
    -160..240 HU window, labels 0/1/2 as 8-bit PNGs (every slice with liver or tumour)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    lo, hi = window
    for image in sorted((sample / "imagesTr").glob("*.nii.gz")):
        img = np.asarray(nib.load(image).dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(sample / "labelsTr" / image.name).dataobj).astype(np.uint8)
        stem = image.name.removesuffix(".nii.gz")
        for z in range(img.shape[2]):
            if not lab[:, :, z].any():
                continue
            pixels = np.clip((img[:, :, z] - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(tmp / "images" / f"{stem}_z{z:03d}.png")
            Image.fromarray(lab[:, :, z]).save(tmp / "labels" / f"{stem}_z{z:03d}.png")
    tmp.rename(out)
    return out


def nnunet_raw(root: Path, raw: Path, ident: int, name: str) -> Path:
    """``root`` (the MSD sample or a PNG folder) as an nnU-Net v2 raw dataset ``raw/DatasetNNN_name``."""
    out = raw / f"Dataset{ident:03d}_{name}"
    if out.exists():
        return out
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    if (root / "images").is_dir():  # 2D PNG slices
        ending, channel = ".png", "slice"  # not "CT": the PNG holds windowed grey values, no HU
        pairs = [(p, root / "labels" / p.name) for p in sorted((root / "images").glob("*.png"))]
    else:
        ending, channel = ".nii.gz", "CT"
        pairs = [(p, root / "labelsTr" / p.name) for p in sorted((root / "imagesTr").glob("*.nii.gz"))]
    for image, label in pairs:
        case = image.name.removesuffix(ending)
        shutil.copy(image, out / "imagesTr" / f"{case}_0000{ending}")
        shutil.copy(label, out / "labelsTr" / f"{case}{ending}")
    manifest = {"channel_names": {"0": channel}, "labels": LABELS, "numTraining": len(pairs),
                "file_ending": ending, "name": name}
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return out


def datasets(out: Path, data_dir: Path) -> dict[str, Path]:
    sample = prepare_lits_sample(data_dir)
    roots = {"lits_sample": out / "lits_sample", "lits_sample_5mm": out / "lits_sample_5mm",
             "lits_slices_png": out / "lits_slices_png"}
    if not roots["lits_sample"].exists():
        shutil.copytree(sample, roots["lits_sample"])  # inputs never modified: the benchmark plans a copy
    if not roots["lits_sample_5mm"].exists():
        thick_slices(sample, roots["lits_sample_5mm"])
    if not roots["lits_slices_png"].exists():
        png_slices(sample, roots["lits_slices_png"])
    return roots


# ---- plans


def hand_values(task: str) -> dict[str, object]:
    cfg = load_config(task).to_dict()
    out = {}
    for key in KEYS:
        section, _, name = key.partition(".")
        out[key] = cfg[section][name]
    return out


def cmd_plans(args: argparse.Namespace) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("medseg.plan").setLevel(logging.INFO)  # the measured attempts
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    roots = datasets(work, args.data_dir)
    results = {"liver.yaml (hand)": {k: (v, "hand-tuned") for k, v in hand_values("liver").items()}}
    print(f"load before planning: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    for folder, ident, nn_name, title in DATASETS:
        if args.nnunet_raw:
            nnunet_raw(roots[folder], args.nnunet_raw, ident, nn_name)
        started = time.perf_counter()
        plan = plan_dataset(roots[folder], modality="CT" if folder != "lits_slices_png" else None,
                            labels=LABELS, budget_minutes=args.budget_minutes, device=args.device)
        seconds = time.perf_counter() - started
        yaml_path = write_plan(plan, work / "plans" / f"{folder}.yaml")
        results[title] = {k: (plan.decisions[k].value, plan.decisions[k].reason) for k in KEYS if k in plan.decisions}
        step = plan.machine["step"]
        print(f"\n## {title}: planned in {seconds:.0f} s -> {yaml_path} (plan {plan.hash})")
        print(f"kept step: {step['step_s']} s (median of {step['samples_s']} after {step['warmup_steps']} warm-up,"
              f" CPU {step['cpu_s']} s/step, load {step['load_1min']}); attempts:")
        for t in plan.timing:
            print(f"  {t['attempt']}: {t.get('mode', '')} patch {t['patch']} batch {t['batch']} -> {t['step_s']} s/step"
                  f" (spread {t['spread']:.0%}, load {t['load_1min']}) {t.get('total_iterations', '')} iterations")
        for key, (value, reason) in results[title].items():
            print(f"- {key}: {value}  # {reason}")
    print("\n| key | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in KEYS:
        row = [str(results[col].get(key, ("-",))[0]) for col in results]
        print(f"| {key} | " + " | ".join(row) + " |")


# ---- nnU-Net v2's planner beside medseg's


def _nnunet_axes(values: list[Any], plans: dict[str, Any], dims: int) -> list[Any]:
    """nnU-Net's per-axis values (SimpleITK's z, y, x order, transposed by ``transpose_forward``) in medseg's
    order (x, y, z: the NIfTI/RAS array axes; 2D: the PNG's column, row axes as SimpleITK indexes them)."""
    back = plans.get("transpose_backward", list(range(len(values))))
    if len(values) == len(back):
        values = [values[b] for b in back]
    return list(reversed(values))


def nnunet_row(plans: dict[str, Any]) -> dict[str, str]:
    confs = plans["configurations"]
    name = "3d_fullres" if "3d_fullres" in confs else "2d"
    conf = confs[name]
    dims = len(conf["patch_size"])
    arch = conf["architecture"]["arch_kwargs"]
    strides = [_nnunet_axes(list(s), plans, dims) for s in arch["strides"][1:]]
    kernels = {tuple(_nnunet_axes(list(k), plans, dims)) for k in arch["kernel_sizes"]}
    fg = plans["foreground_intensity_properties_per_channel"]["0"]
    norm = conf["normalization_schemes"][0]
    if norm == "CTNormalization":
        norm = (f"CT: clip to foreground {fg['percentile_00_5']:.0f}..{fg['percentile_99_5']:.0f}, z-score"
                f" (mean {fg['mean']:.0f}, std {fg['std']:.0f})")
    return {"configuration": f"{name} (of {', '.join(confs)})",
            "spacing": "x".join(f"{s:g}" for s in _nnunet_axes(list(conf["spacing"]), plans, dims)),
            "patch": "x".join(str(p) for p in _nnunet_axes(list(conf["patch_size"]), plans, dims)),
            "batch": str(conf["batch_size"]),
            "topology": f"{arch['n_stages'] - 1} poolings {strides}; kernels {sorted(kernels)};"
                        f" widths {arch['features_per_stage'][0]}-{arch['features_per_stage'][-1]}",
            "normalisation": norm,
            "schedule": "1000 epochs x 250 iterations (fixed)"}


def medseg_row(plan: dict[str, Any]) -> dict[str, str]:
    d = {k: v["value"] for k, v in plan["decisions"].items()}
    dims = d["network.spatial_dims"]
    mode = "2D slices" if d.get("network.slice_mode") else f"{dims}D"
    intensity = d.get("preprocessing.intensity")
    window = d.get("preprocessing.window")
    if intensity == "window" and isinstance(window, dict):
        lo, hi = ((window["min"], window["max"]) if "min" in window else
                  (window["level"] - window["width"] / 2, window["level"] + window["width"] / 2))
        norm = f"CT window {lo:.0f}..{hi:.0f} HU (foreground 0.5-99.5%) to 0..1"
    else:
        norm = str(intensity)
    return {"configuration": mode,
            "spacing": "x".join(f"{s:g}" for s in d["preprocessing.spacing"]),
            "patch": "x".join(str(p) for p in d["training.patch_size"]),
            "batch": str(d["training.batch_size"]),
            "topology": f"{len(d.get('network.strides', []))} poolings {d.get('network.strides')}; kernels 3;"
                        f" widths {d['network.channels'][0]}-{d['network.channels'][-1]}",
            "normalisation": norm,
            "schedule": f"{d['training.epochs']} epochs x {d['training.iterations_per_epoch']} iterations"
                        f" ({plan['machine']['step']['step_s']} s/step measured, {plan['budget_minutes']:g} min)"}


def cmd_compare(args: argparse.Namespace) -> None:
    need(args.nnunet_preprocessed, "--nnunet-preprocessed", "folder", "nnUNet_preprocessed of the planner's run")
    for folder, ident, nn_name, title in DATASETS:
        need(args.out / "plans" / f"{folder}.plan.json", "--out", "file", "run `bench_plan.py plans --out` first")
        ours = json.loads((args.out / "plans" / f"{folder}.plan.json").read_text())
        found = sorted(args.nnunet_preprocessed.glob(f"Dataset{ident:03d}_*/nnUNetPlans.json"))
        if not found:
            raise SystemExit(f"{args.nnunet_preprocessed}: no Dataset{ident:03d}_*/nnUNetPlans.json; run"
                             f" nnUNetv2_plan_and_preprocess -d {ident} first")
        theirs = nnunet_row(json.loads(found[0].read_text()))
        mine = medseg_row(ours)
        print(f"\n### {title} (axes x, y, z as medseg reads them)\n")
        print("| | medseg.plan | nnU-Net v2 planner |\n|---|---|---|")
        for key in mine:
            print(f"| {key} | {mine[key]} | {theirs[key]} |")


# ---- trained runs side by side


def _metric(metrics: dict[str, Any], name: str) -> str:
    return f"{metrics[name]['dice']:.3f}" if name in metrics else "-"


def _rescored(run: Path, classes: dict[str, list[int]]) -> dict[str, Any]:
    """The run's validation predictions (``predictions/<case>.nii.gz``) scored again with ``classes``, in the
    layout of its ``metrics.json`` (so runs planned with other reported classes compare like with like)."""
    from monai.transforms import LoadImage

    from medseg.evaluation.classes import class_dice

    loader = LoadImage(image_only=True)
    scores: dict[str, list[float]] = {c: [] for c in classes}
    for case in json.loads((run / "cases.json").read_text())["val"]:
        name = Path(case["label"]).name
        pred, ref = np.asarray(loader(str(run / "predictions" / name))), np.asarray(loader(case["label"]))
        for c, members in classes.items():
            scores[c].append(class_dice(pred, ref, members))
    return {c: {"dice": float(np.mean(v))} for c, v in scores.items()}


def cmd_dice(args: argparse.Namespace) -> None:
    from medseg.evaluation.classes import parse_classes

    classes = parse_classes(args.classes) if args.classes else None
    for spec in args.runs:  # every run's files checked first: a wrong folder is named before the table
        run = Path(spec.rpartition("=")[2])
        need(run, "TITLE=RUN_DIR", "folder", "a finished training run")
        for part in ("config.yaml", "run.json", *(("cases.json",) if classes else ("metrics.json",))):
            need(run / part, "TITLE=RUN_DIR", "file", "a finished training run holds it")
    print("| run | liver Dice | tumour Dice | spacing | mode, patch | epochs x iterations | step s (load) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.runs:
        title, _, folder = spec.rpartition("=")
        run = Path(folder)
        metrics = _rescored(run, classes) if classes else json.loads((run / "metrics.json").read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        info = json.loads((run / "run.json").read_text())
        step = "-"
        if (run / "plan.json").is_file():
            s = json.loads((run / "plan.json").read_text())["machine"].get("step", {})
            step = f"{s.get('step_s', '-')} ({s.get('load_1min', '-')})"
        net, tr = cfg["network"], cfg["training"]
        mode = "2D slices" if net.get("slice_mode") else f"{net['spatial_dims']}D"
        spacing = cfg["preprocessing"]["spacing"]
        print(f"| {title or run.name} | {_metric(metrics, 'liver')} | {_metric(metrics, 'tumour')} |"
              f" {'x'.join(f'{v:g}' for v in spacing) if isinstance(spacing, list) else spacing} |"
              f" {mode} {'x'.join(str(p) for p in tr['patch_size'])} | {tr['epochs']} x"
              f" {tr['iterations_per_epoch']} (ran {info.get('epochs_run')}) | {step} | {info['seconds']:.0f} |")


# ---- preprocess once: the disk cache against the all-in-memory cache


def synthetic_ct(root: Path, n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    """``n`` CT-sized MSD cases: air, a body ellipse (soft tissue), a liver ellipsoid (label 1) holding a
    tumour sphere (label 2), noise; int16 HU images, uint8 labels; the last fifth held out for validation."""
    if (root / "dataset.json").is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:shape[0], :shape[1], :shape[2]]
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    entries = []
    for i in range(n):
        cx, cy, cz = (np.array(shape) / 2 + rng.uniform(-10, 10, 3)).tolist()
        body = ((x - cx) / (0.45 * shape[0])) ** 2 + ((y - cy) / (0.35 * shape[1])) ** 2 <= 1.0
        liver = (((x - cx + 60) / 90.0) ** 2 + ((y - cy) / 70.0) ** 2 + ((z - cz) / (0.3 * shape[2])) ** 2) <= 1.0
        tumour = ((x - cx + 60) ** 2 + (y - cy) ** 2) / 400.0 + ((z - cz) * spacing[2] / spacing[0]) ** 2 / 400.0 <= 1
        image = np.where(body, 40, -1000).astype(np.int16) + np.zeros(shape, np.int16)
        image[liver] = 100
        image[tumour & liver] = 60
        image += rng.integers(-20, 21, shape, dtype=np.int16)
        label = np.zeros(shape, np.uint8)
        label[liver] = 1
        label[tumour & liver] = 2
        name = f"syn_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    n_val = max(1, n // 5)
    manifest = {"name": "synthetic CT", "modality": {"0": "CT"}, "labels": {str(v): k for k, v in LABELS.items()},
                "numTraining": n - n_val, "training": entries[:-n_val], "validation": entries[-n_val:]}
    (tmp / "dataset.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(root)
    return root


def cmd_startup(args: argparse.Namespace) -> None:
    """(child) Build the training and validation datasets as ``medseg.train`` does and draw batches; one JSON
    line of timings (``startup_s``: from the parent starting this process, interpreter and imports included,
    to the first training batch). ``--fill``: also read every case once (the first disk-cache run fills its entries)."""
    started = time.perf_counter()
    from medseg.data.case import items
    from medseg.data.layouts import load_dataset
    from medseg.engine import builders
    from medseg.transforms import fit_preprocessing

    sets = [f"data.dataset={args.dataset}", f"training.num_workers={args.workers}"]
    sets += [f"training.cache_dir={args.cache_dir}"] if args.cache_dir else []
    sets += [f"training.cache_rate={args.cache_rate}"]
    cfg = load_config("liver", sets)
    train, val = load_dataset(cfg, args.dataset, cfg.training.seed)
    cfg = fit_preprocessing(cfg, items(train))
    imported = time.perf_counter()
    train_ds = builders.training_dataset(train, cfg)
    val_ds = builders.validation_dataset(val, cfg)
    built = time.perf_counter()
    fill_s = 0.0
    if args.fill:
        for ds in (train_ds, val_ds):
            for i in range(len(ds)):
                ds[i]
        fill_s = time.perf_counter() - built
    loader = builders.training_loader(train_ds, cfg, batches=args.batches)
    t0, wall_t0 = time.perf_counter(), time.time()  # wall clock: the parent's --t0 is on it
    first = 0.0
    for k, _batch in enumerate(loader):
        if k == 0:
            first = time.perf_counter() - t0
    draws = time.perf_counter() - t0
    v0 = time.perf_counter()
    for i in range(len(val_ds)):
        val_ds[i]
    val_read = time.perf_counter() - v0
    print("STARTUP " + json.dumps({
        "cases": [len(train), len(val)], "imports_config_s": round(imported - started, 1),
        "datasets_built_s": round(built - imported, 1), "fill_s": round(fill_s, 1),
        "first_batch_s": round(first, 2), "startup_s": round(wall_t0 + first - args.t0, 1),
        "batches": args.batches, "s_per_batch": round(draws / args.batches, 3),
        "validation_pass_s": round(val_read, 1)}), flush=True)


def _timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """``cmd`` under ``/usr/bin/time -v``: its STARTUP line, wall seconds and peak RSS."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd, "--t0", repr(time.time())], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    out = json.loads(proc.stdout.split("STARTUP ", 1)[1].splitlines()[0])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", proc.stderr)
    parts = [float(p) for p in wall.group(1).split(":")] if wall else [0.0]
    secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {**out, "peak_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None, "wall_s": round(secs, 1)}


def cmd_cache(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = synthetic_ct(args.out / "synthetic_ct", args.cases, tuple(args.shape), tuple(args.spacing))
    print(f"{args.cases} synthetic cases {args.shape} at {args.spacing} mm in {root}"
          f" ({time.perf_counter() - started:.0f} s; {sum(f.stat().st_size for f in root.rglob('*.gz')) / 2**30:.2f}"
          f" GiB); load {os.getloadavg()[0]:.2f}")
    cache = args.out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    child = [sys.executable, str(Path(__file__).resolve()), "_startup", "--dataset", str(root),
             "--batches", str(args.batches), "--workers", str(args.workers)]
    rows = {}
    disk = ["--cache-dir", str(cache), "--cache-rate", "0"]  # nothing of it held in memory
    for title, extra in (("in-memory cache (CacheDataset, cache_rate 1)", []),
                         ("disk cache, cache_rate 0, 1st run (fills it)", disk + ["--fill"]),
                         ("disk cache, cache_rate 0, 2nd run (reuses it)", disk),
                         ("disk cache, cache_rate 0.25, 3rd run (a quarter held in memory)",
                          ["--cache-dir", str(cache), "--cache-rate", "0.25"])):
        load = os.getloadavg()[0]
        rows[title] = {**_timed(child + extra, args.out / f"{len(rows)}.log"), "load": round(load, 2)}
        print(title, json.dumps(rows[title]), flush=True)
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**30
    print(f"\ndisk cache: {size:.2f} GiB in {cache}\n")
    print("| run | start-up s (to the first batch) | of which preprocessing / filling s | s per batch after |"
          " validation pass s | peak RSS GiB | wall s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for title, r in rows.items():
        print(f"| {title} | {r['startup_s']} | {r['datasets_built_s'] + r['fill_s']:.1f} | {r['s_per_batch']} |"
              f" {r['validation_pass_s']} | {r['peak_rss_gib']} | {r['wall_s']} | {r['load']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="{plans,compare,dice,cache}")
    p = sub.add_parser("plans", help="plan the three datasets here (measured step times)")
    p.add_argument("--budget-minutes", type=float, default=15.0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--data-dir", type=Path, default=REPO / "data")
    p.add_argument("--out", type=Path, default=None, help="datasets and plans (default: a temp dir)")
    p.add_argument("--nnunet-raw", type=Path, default=None, help="also write the datasets as nnU-Net v2 raw here")
    c = sub.add_parser("compare", help="medseg's plans (from `plans --out`) beside nnU-Net v2's plans JSON")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--nnunet-preprocessed", type=Path, required=True, help="nnUNet_preprocessed folder")
    d = sub.add_parser("dice", help="trained runs side by side: TITLE=RUN_DIR ...")
    d.add_argument("runs", nargs="+")
    d.add_argument("--classes", help="score every run's validation predictions with these classes, e.g."
                                     " liver=1+2,tumour=2 (default: each run's own metrics.json)")
    k = sub.add_parser("cache", help="disk cache vs in-memory cache on synthetic CT-sized cases")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--cases", type=int, default=60)
    k.add_argument("--shape", type=int, nargs=3, default=[512, 512, 64])
    k.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 2.5])
    k.add_argument("--batches", type=int, default=20)
    k.add_argument("--workers", type=int, default=0)
    s = sub.add_parser("_startup")
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--cache-dir", default="")
    s.add_argument("--fill", action="store_true")
    s.add_argument("--cache-rate", type=float, default=1.0)
    s.add_argument("--batches", type=int, default=20)
    s.add_argument("--workers", type=int, default=0)
    s.add_argument("--t0", type=float, default=0.0, help="the parent's time.time() when it started this process")
    args = parser.parse_args()
    if args.command in (None, "plans"):
        if args.command is None:
            args = parser.parse_args(["plans"])
        args.out = Path(args.out or tempfile.mkdtemp(prefix="bench_plan_"))
        cmd_plans(args)
    else:
        {"compare": cmd_compare, "dice": cmd_dice, "cache": cmd_cache, "_startup": cmd_startup}[args.command](args)


if __name__ == "__main__":
    run(main)
