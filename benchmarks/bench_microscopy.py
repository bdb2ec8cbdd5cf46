"""Nuclei (DSB 2018 sample): the U-Net weight map against no weight map and a plain MONAI 2D loop, same minutes.

Rows, each trained on the sample's training half and scored on its validation half (``medseg/data/nuclei.py``:
columns 272..511, 51 of the image's 125 nuclei):

- ``nuclei_2d.yaml``: ``training.loss: weighted_dice_ce`` (weight map, w0 = 10, sigma = 5 px);
- the same YAML with ``training.loss: dice_ce`` (no weight map);
- a plain MONAI 2D loop: ``monai.networks.nets.UNet``, ``DiceCELoss``, random 128x128 crops with flips,
  Adam, ``sliding_window_inference``; instances as connected components of the foreground.

Equal budgets: the two medseg rows train the same ``--epochs`` (same steps, same schedule to its end; their
step costs differ only by the weight channel, the printed s/step shows it), with ``--guard-minutes`` as a
stop; the plain loop then trains for the mean of their training seconds (history.json: last epoch's end, the
validations included), so every row gets the same minutes.

Scores: pixel Dice of the nucleus class, object F1 at IoU 0.5, aggregated Jaccard index, adapted Rand error
(:mod:`medseg.evaluation.instances`). medseg's rows predict through ``medseg.predict`` with ``--instances`` (the
YAML's watershed on the predicted interiors). Also the prediction time of one 512x512 image and of a folder
of copies, with and without overlap-tile (reflect padding).

Example (2 cores, about 3 x the rows' minutes + prediction):
    .venv/bin/python benchmarks/bench_microscopy.py --epochs 20 --data-dir data --out benchmarks/results/microscopy
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.data.nuclei import prepare_nuclei_sample  # noqa: E402
from medseg.evaluation.classes import class_dice  # noqa: E402
from medseg.evaluation.instances import instance_metrics  # noqa: E402
from medseg.inference.instances import label_instances  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import need, run  # noqa: E402


def score(pred_semantic: np.ndarray, pred_instances: np.ndarray, ref_instances: np.ndarray) -> dict[str, float]:
    m = instance_metrics(ref_instances, pred_instances)
    return {"pixel_dice": class_dice(pred_semantic > 0, ref_instances > 0, [1]), "object_f1": m["object_f1"], "aji": m["aji"],
            "adapted_rand_error": m["adapted_rand_error"], "objects": m["objects_predicted"],
            "objects_reference": m["objects_reference"]}


def medseg_row(name: str, overrides: list[str], root: Path, epochs: int, guard_minutes: float,
               work: Path) -> tuple[dict, Path]:
    from medseg.workflows import predict, train

    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    train.run("nuclei_2d", data_dir=root.parent, output_dir=run_dir / "run", max_minutes=guard_minutes,
              epochs=epochs, overrides=[*overrides, "tracking.enabled=false", f"bundle.dir={run_dir / 'bundles'}",
                                        f"bundle.name={name}"])
    history = json.loads((run_dir / "run" / "history.json").read_text())
    seconds, done = float(history["seconds"][-1]), int(history["epoch"][-1])
    steps = done * _iterations(run_dir / "run")
    bundle = run_dir / "bundles" / name
    out = run_dir / "pred"
    predict.run(bundle, root / "images" / "nuclei_val.tif", out, instances=True)
    semantic = tifffile.imread(out / "nuclei_val_seg.tif") > 0
    instances = tifffile.imread(out / "nuclei_val_instances.tif")
    ref = tifffile.imread(root / "instances" / "nuclei_val.tif")
    return {"row": name, "train_s": round(seconds, 1), "epochs": done, "steps": steps,
            "s_per_step": round(seconds / max(steps, 1), 3), **score(semantic, instances, ref)}, bundle


def _iterations(run_dir: Path) -> int:
    import yaml

    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["training"]["iterations_per_epoch"])


def _normalise(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def plain_monai_row(root: Path, minutes: float, seed: int = 0) -> dict:
    """The baseline: a MONAI 2D U-Net trained by a bare loop for the same minutes."""
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    manifest = json.loads((root / "dataset.json").read_text())
    pairs = [(_normalise(tifffile.imread(root / c["image"])),
              (np.asarray(Image.open(root / c["label"])) > 0).astype(np.int64)) for c in manifest["training"]]
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
               num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < minutes * 60:
        xs, ys = [], []
        for _ in range(8):
            image, label = pairs[rng.integers(len(pairs))]
            r, c = rng.integers(0, image.shape[0] - 127), rng.integers(0, image.shape[1] - 127)
            x, y = image[r:r + 128, c:c + 128], label[r:r + 128, c:c + 128]
            if rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            xs.append(np.ascontiguousarray(x)[None])
            ys.append(np.ascontiguousarray(y)[None])
        net.train()
        opt.zero_grad()
        loss = loss_fn(net(torch.from_numpy(np.stack(xs))), torch.from_numpy(np.stack(ys)))
        loss.backward()
        opt.step()
        steps += 1
    seconds = time.perf_counter() - start
    net.eval()
    val = _normalise(tifffile.imread(root / "images" / "nuclei_val.tif"))
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(val)[None, None], (128, 128), 4, net, overlap=0.25,
                                          mode="gaussian")
    semantic = logits[0].argmax(0).numpy().astype(np.uint8)
    instances = label_instances(semantic, interior=1)
    ref = tifffile.imread(root / "instances" / "nuclei_val.tif")
    return {"row": "plain MONAI 2D loop", "train_s": round(seconds, 1), "epochs": 0, "steps": steps,
            "s_per_step": round(seconds / max(steps, 1), 3), **score(semantic > 0, instances, ref)}


def prediction_times(bundle: Path, root: Path, work: Path, copies: int) -> dict[str, float]:
    """Seconds of ``medseg.predict`` (one call each, start-up included) for one 512x512 8-bit PNG and for a folder
    of ``copies`` of it, with reflect padding (overlap-tile, nuclei_2d's default) and with constant padding."""
    from medseg.workflows import predict

    val = tifffile.imread(root / "images" / "nuclei_val.tif")
    full = np.pad(val, ((0, 0), (0, 512 - val.shape[1])), mode="reflect")  # 512x512 from the validation half
    full = (255 * _normalise(full)).astype(np.uint8)
    folder = work / "many"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(copies):
        Image.fromarray(full).save(folder / f"img{i:03d}.png")
    times = {}
    config = bundle / "configs" / "medseg_task.json"
    original = config.read_text()
    try:
        for mode in ("reflect", "constant"):
            cfg = json.loads(original)
            cfg["inference"]["padding_mode"] = mode
            config.write_text(json.dumps(cfg))
            start = time.perf_counter()
            predict.run(bundle, folder / "img000.png", work / f"one_{mode}", instances=False)
            times[f"one_512_{mode}_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            predict.run(bundle, folder, work / f"many_{mode}", instances=False)
            times[f"folder_{copies}_{mode}_s"] = round(time.perf_counter() - start, 2)
    finally:
        config.write_text(original)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="training epochs of both medseg rows (10 steps each)")
    p.add_argument("--guard-minutes", type=float, default=8.0, help="a medseg row stops after this many minutes")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/microscopy"))
    p.add_argument("--copies", type=int, default=100, help="PNGs in the prediction-time folder (0: no timing)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.data_dir.exists():
        need(args.data_dir, "--data-dir", "folder", "where the nuclei sample is or is prepared")
    if args.out.exists():
        need(args.out, "--out", "folder")
    torch.set_num_threads(args.threads)
    root = prepare_nuclei_sample(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    load = {"load_start": Path("/proc/loadavg").read_text().split()[:3]} if Path("/proc/loadavg").exists() else {}
    common = [f"training.threads={args.threads}"]
    weighted, bundle = medseg_row("weight_map", ["training.loss=weighted_dice_ce", *common], root, args.epochs,
                                  args.guard_minutes, args.out)
    plain_weight = medseg_row("no_weight_map", ["training.loss=dice_ce", *common], root, args.epochs,
                              args.guard_minutes, args.out)[0]
    minutes = (weighted["train_s"] + plain_weight["train_s"]) / 2 / 60
    rows = [weighted, plain_weight, plain_monai_row(root, minutes)]
    times = prediction_times(bundle, root, args.out, args.copies) if args.copies else {}
    if load:
        load["load_end"] = Path("/proc/loadavg").read_text().split()[:3]
    result = {"epochs": args.epochs, "plain_minutes": round(minutes, 2), "threads": args.threads, **load,
              "rows": rows, "prediction": times}
    (args.out / "bench_microscopy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'row':22s} {'train s':>8s} {'steps':>6s} {'s/step':>7s} {'Dice':>6s} {'obj F1':>7s} {'AJI':>6s}"
          f" {'ARE':>6s} {'objects':>8s}")
    for r in rows:
        print(f"{r['row']:22s} {r['train_s']:8.0f} {r['steps']:6d} {r['s_per_step']:7.3f} {r['pixel_dice']:6.3f}"
              f" {r['object_f1']:7.3f} {r['aji']:6.3f} {r['adapted_rand_error']:6.3f}"
              f" {r['objects']:4d}/{r['objects_reference']}")
    for key, value in times.items():
        print(f"{key}: {value} s")
    if load:
        print(f"load average (1, 5, 15 min) at the start {' '.join(load['load_start'])}, at the end"
              f" {' '.join(load['load_end'])}")
    return 0


if __name__ == "__main__":
    run(main)
