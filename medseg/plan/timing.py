"""Measured costs the schedule is fitted to, on this machine: a few real training steps (the engine's network,
loss, optimiser and MONAI SupervisedTrainer, built by :mod:`medseg.engine.builders` from the draft plan) on
patch-sized batches, the real data pipeline's time per batch and per cached case, and the GPU's peak memory.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Events

from medseg.config import TaskConfig
from medseg.data.case import Case, items
from medseg.engine import builders
from medseg.transforms import fit_preprocessing, input_channels

logger = logging.getLogger("medseg.plan")


#: steps run and not timed before the timed ones (allocator, oneDNN primitive caches, autotuning)
WARMUP_STEPS = 2


@dataclass(frozen=True)
class StepTime:
    step_s: float  # one optimiser step (forward, backward, update) on a batch: the median of the timed steps
    peak_bytes: float = 0.0  # GPU peak memory of one step (0 on a CPU)
    amp: str = "none"
    samples: tuple[float, ...] = ()  # every timed step's wall seconds (warm-up excluded)
    cpu_s: float = 0.0  # median process CPU seconds per timed step (all threads): what load does not inflate
    load: float = -1.0  # the 1-minute load average when the steps were timed (-1: unknown)

    def to_json(self) -> dict[str, Any]:
        return {"step_s": round(self.step_s, 4), "samples_s": [round(s, 4) for s in self.samples],
                "spread": round((max(self.samples) - min(self.samples)) / self.step_s, 3) if self.samples else 0.0,
                "cpu_s": round(self.cpu_s, 4), "load_1min": round(self.load, 2), "amp": self.amp,
                "warmup_steps": WARMUP_STEPS, "peak_bytes": int(self.peak_bytes)}


@dataclass(frozen=True)
class DataTime:
    per_batch_s: float  # a training batch out of the cached volume (crop + augmentation), serial workers
    cache_s: float  # preprocessing one case into the cache (resampling, normalisation)


def _batches(cfg: TaskConfig, n: int) -> list[dict[str, torch.Tensor]]:
    tr, net = cfg.training, cfg.network
    g = torch.Generator().manual_seed(0)
    shape = (tr.batch_size, input_channels(cfg), *tr.patch_size)
    classes = len(cfg.data.labels)
    return [{"image": torch.randn(shape, generator=g),
             "label": torch.randint(0, classes, (tr.batch_size, 1, *tr.patch_size), generator=g).float()}
            for _ in range(n)]


def measure_step(cfg: TaskConfig, device: torch.device, steps: int = 5) -> StepTime:
    """Median seconds of ``steps`` training steps after ``WARMUP_STEPS`` untimed ones, through the engine's
    SupervisedTrainer. The median (not the mean) so that a step slowed by another process on a shared machine
    does not move the plan; the samples, the CPU time per step and the load average go into ``plan.json``."""
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 1})})
    net, model = builders.build_model(cfg, device)
    optimizer, _ = builders.optimiser_and_schedule(model.parameters(), cfg)
    trainer = builders.build_trainer(cfg, model, _batches(cfg, steps + WARMUP_STEPS), optimizer,
                                     builders.training_loss(cfg), device)
    stamps: list[tuple[float, float]] = []

    def stamp(_engine: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), time.process_time()))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    quiet = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # ignite's epoch lines are not the planner's
    try:
        trainer.run()
    finally:
        quiet.setLevel(level)
    peak = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0.0
    timed = stamps[WARMUP_STEPS - 1:]  # the gap after the last warm-up step's end is the first timed step
    walls = [b[0] - a[0] for a, b in zip(timed, timed[1:])]
    cpus = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
    del trainer, net, model, optimizer
    return StepTime(statistics.median(walls), peak, cfg.training.amp, tuple(walls), statistics.median(cpus),
                    _load())


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return -1.0


def measure_data(cfg: TaskConfig, cases: list[Case], draws: int = 4) -> DataTime:
    """The real training data pipeline on the first case: its caching time, and the seconds per batch of
    patches drawn from the cache."""
    cfg = fit_preprocessing(cfg, items(cases))
    started = time.perf_counter()
    dataset = builders.training_dataset(cases[:1], cfg, cache_rate=1.0)
    cache_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(draws):
        dataset[0]
    per_sample = (time.perf_counter() - started) / draws
    return DataTime(per_sample * cfg.training.batch_size, cache_s)


def validation_seconds(cfg: TaskConfig, step: StepTime, shape: list[int], n_cases: int) -> float:
    """A validation round, estimated from the measured step: windows per case at the configured overlap, a
    forward pass taken as a third of a training step per patch."""
    tr = cfg.training
    overlap = cfg.evaluation.sw_overlap
    dims = len(tr.patch_size)
    img = shape[-dims:] if not cfg.network.slice_mode else [s for a, s in enumerate(shape) if a != cfg.network.slice_axis]
    windows = 1
    for n, p in zip(img, tr.patch_size):
        stride = max(1, int(p * (1 - overlap)))
        windows *= max(1, -(-(max(n, p) - p) // stride) + 1)
    if cfg.network.slice_mode:
        windows *= shape[cfg.network.slice_axis]
    return n_cases * windows * step.step_s / 3.0 / tr.batch_size
