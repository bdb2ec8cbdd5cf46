"""Resumable training checkpoints, written atomically.

``checkpoints/last.pt`` holds everything a killed run needs to go on as if it had never stopped: network,
optimiser, scheduler, gradient scaler, the trainer's position (epoch, iteration), the evaluator's best
metric, early-stopping counters, the history so far, and every random state (torch CPU and CUDA, numpy,
Python, and each random MONAI transform's generator). It is written at the end of an epoch, after
validation, under a temporary name and renamed into place (``medseg.fileio.atomic_path``): a kill during
the write leaves the previous checkpoint intact. ``checkpoints/best.pt`` (the network's weights at the
best validation mean Dice) is written the same way.

Everything is stored as tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

from medseg.errors import MedsegError
from medseg.fileio import atomic_path

logger = logging.getLogger("medseg.train")

FORMAT = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    if not path.is_file():
        raise MedsegError(f"{path}: no checkpoint there")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file: pickle, zip and torch errors
        first = (str(err).strip().splitlines() or [""])[0]
        first = first if len(first) <= 160 else first[:157] + "..."
        raise MedsegError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); restore the file"
                          " from a copy, or start a new run") from err


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (``.<name>.pt.<random>.tmp``) a run killed inside :func:`save_checkpoint` left
    beside its checkpoints (each as large as a checkpoint, never renamed into place); returns them."""
    stale = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def random_transforms(transform: Any) -> list[Randomizable]:
    """Every random MONAI transform reachable from ``transform`` (a Compose, nested ones included), in a
    stable order (attribute traversal), each object once."""
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        children: Iterator[Any]
        if isinstance(obj, (list, tuple)):
            children = iter(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("monai.", "medseg.")):
            children = iter(vars(obj).values())
        else:
            return
        for child in children:
            if isinstance(child, (list, tuple)) or hasattr(child, "__dict__"):
                visit(child, depth + 1)

    visit(transform, 0)
    return found


def _numpy_state(rs: np.random.RandomState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = rs.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(rs: np.random.RandomState, state: dict[str, Any]) -> None:
    rs.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                  state["cached"]))


def rng_state(transforms: list[Randomizable]) -> dict[str, Any]:
    """The global random states and those of ``transforms`` (see :func:`random_transforms`)."""
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(np.random.mtrand._rand),
        "python": [py[0], list(py[1]), py[2]],
        "transforms": [_numpy_state(t.R) for t in transforms],
    }


def set_rng_state(state: dict[str, Any], transforms: list[Randomizable]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    _set_numpy_state(np.random.mtrand._rand, state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if len(state["transforms"]) != len(transforms):
        raise MedsegError(
            f"checkpoint: it holds {len(state['transforms'])} random transform states but the training chain has "
            f"{len(transforms)}; the augmentation code changed since the run started"
        )
    for t, s in zip(transforms, state["transforms"]):
        _set_numpy_state(t.R, s)
