"""Does the data pipeline keep up with training? Time spent waiting for a batch vs the whole training step.

Runs the default liver task's training step (network, loss, optimiser, patch size, batch size, augmentation
as configured) on its dataset (the built-in LiTS sample when data/Task03_Liver is absent), with the same
CacheDataset (deterministic preprocessing cached once), seeded loader, network, loss and optimiser as
training builds them (medseg.engine.builders), once per worker setting, in one process so the settings are compared on the same machine state. Per step it
measures the wait for the next batch and the whole step (wait + forward + backward + optimiser step).
Target: waiting <= 10% of the step time with the random part in workers.

Usage:
    .venv/bin/python benchmarks/bench_data_pipeline.py [--task liver] [--steps 10] [--workers monai 0 2 thread]

``monai`` is the baseline: the same chain with MONAI's Rand3DElasticd, RandAffined and RandFlipd instead of
medseg's RandDeformd, and a balanced crop without cached voxel lists, in the training process.
``thread`` is MONAI's ThreadDataLoader: the next batch is augmented in a background thread during the step.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
from monai import transforms as mt
from monai.data import CacheDataset, ThreadDataLoader

from medseg.config import load_config
from medseg.data.case import items
from medseg.data.layouts import load_dataset
from medseg.data.locate import locate_dataset
from medseg.engine import builders
from medseg.transforms import fit_preprocessing
from medseg.transforms.pipeline import instantiate, preprocess_spec, random_spec

from _cli import positive, run


def monai_reference(cfg: dict) -> mt.Compose:
    """The baseline: the same chain with MONAI's own spatial augmentation, as medseg had it before
    RandDeformd (Rand3DElasticd, then RandAffined, then RandFlipd per axis) and a balanced crop that
    searches the label on every draw. 3D tasks only."""
    aug = cfg.augmentation
    keys, both = ["image", "label"], ["bilinear", "nearest"]
    rot, (lo, hi) = math.radians(aug.rotate_deg), aug.scale
    spatial = [
        mt.Rand3DElasticd(keys, sigma_range=aug.elastic.sigma, magnitude_range=aug.elastic.magnitude,
                          prob=aug.elastic.prob, mode=both, padding_mode="zeros"),
        mt.RandAffined(keys, prob=max(aug.rotate_prob, aug.scale_prob), rotate_range=[[-rot, rot]] * 3,
                       scale_range=[[lo - 1.0, hi - 1.0]] * 3, mode=both, padding_mode="zeros"),
        *[mt.RandFlipd(keys, prob=aug.flip_prob, spatial_axis=a) for a in range(3)],
    ]
    crop = [mt.SpatialPadd(keys, spatial_size=cfg.training.patch_size),
            mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=cfg.training.patch_size,
                                      pos=cfg.training.pos_neg_ratio, neg=1.0, num_samples=1,
                                      image_key="image", image_threshold=0.0)]
    intensity = [s for s in random_spec(cfg) if s["_target_"] != "RandDeformd"]
    return mt.Compose(instantiate(preprocess_spec(cfg)) + crop + spatial + instantiate(intensity))


def measure(cfg: dict, ds: CacheDataset, workers: str, steps: int, warmup: int) -> dict:
    tr = cfg.training
    torch.manual_seed(tr.seed)
    _, model = builders.build_model(cfg, torch.device("cpu"))
    model.train()
    opt, _ = builders.optimiser_and_schedule(model.parameters(), cfg)
    loss_fn = builders.training_loss(cfg)
    n_workers = int(workers) if workers.isdigit() else 0  # monai: the stock-MONAI chain, in the training process
    loader = builders.training_loader(ds, cfg, num_workers=n_workers, batches=steps + warmup)
    if workers == "thread":  # augmentation of the next batch in a background thread, during this step
        loader = ThreadDataLoader(ds, batch_size=tr.batch_size, sampler=loader.sampler, num_workers=0,
                                  buffer_size=1, collate_fn=builders.collate_plain)
    waits, totals = [], []
    it = iter(loader)
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(batch["image"]), batch["label"])  # [main, aux...] with deep supervision
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= warmup:  # the first batches include worker start-up
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    return {"workers": workers, "wait_s": sum(waits), "step_s": sum(totals),
            "median_wait_s": statistics.median(waits), "median_step_s": statistics.median(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="liver")
    parser.add_argument("--steps", type=positive, default=10, help="timed steps per setting (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", nargs="+", default=["monai", "0", "2"],
                        help="per setting: worker processes, 'thread', or 'monai' (MONAI's spatial augmentation, 0 workers)")
    parser.add_argument("--data-dir", type=Path, help="the folder holding the task's dataset (default: data; given, "
                        "it must exist)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    bad = [w for w in args.workers if not (w.isdigit() or w in ("monai", "thread"))]
    if bad:
        from medseg.errors import MedsegError

        raise MedsegError(f"--workers {' '.join(bad)}: each setting is a number of worker processes, 'thread' or 'monai'")
    cfg = load_config(args.task, args.overrides)
    torch.set_num_threads(cfg.training.threads or os.cpu_count() or 1)
    root = locate_dataset(cfg, args.data_dir or Path("data"), explicit=args.data_dir is not None)
    cases = load_dataset(cfg, root, cfg.training.seed)[0]
    cfg = fit_preprocessing(cfg, cases)
    t = time.perf_counter()
    ds = builders.training_dataset(cases, cfg, cache_rate=1.0)
    cache_s = time.perf_counter() - t
    tr = cfg.training
    print(f"task {cfg.task}: {len(cases)} training case(s), patch {tr.patch_size}, batch {tr.batch_size},"
          f" {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()};"
          f" deterministic preprocessing cached once in {cache_s:.1f} s")
    print(f"{'workers':>7} {'wait s':>8} {'step s':>8} {'wait/step':>9} {'median wait':>11} {'median step':>11}")
    reference = None
    if "monai" in args.workers and (len(tr.patch_size) != 3 or cfg.network.slice_mode):
        print("the 'monai' baseline is written for 3D patches; skipped for this task")
        args.workers = [w for w in args.workers if w != "monai"]
    for workers in args.workers:
        if workers == "monai" and reference is None:
            reference = CacheDataset(items(cases), monai_reference(cfg), cache_rate=1.0, progress=False)
        r = measure(cfg, reference if workers == "monai" else ds, workers, args.steps, args.warmup)
        print(f"{str(r['workers']):>7} {r['wait_s']:>8.2f} {r['step_s']:>8.2f} {r['wait_s'] / r['step_s']:>9.1%}"
              f" {r['median_wait_s']:>11.3f} {r['median_step_s']:>11.3f}")


if __name__ == "__main__":
    run(main)
