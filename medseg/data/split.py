"""How cases are split: a held-out validation share, or k folds for cross-validation.

Both are fixed by a seed and must stay as they are: ``--resume`` and existing run folders
(``cases.json``, ``folds.json``) rely on the same seed giving the same cases.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from medseg.errors import MedsegError

T = TypeVar("T")


def train_val_split(cases: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(training, validation): ``val_fraction`` of the cases (at least one) held out after a shuffle of their
    indices with Python's ``random.Random(seed)``; both parts keep the input order."""
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(cases)))
    val_idx = set(order[:n_val])
    return [c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx]


def kfold_parts(n: int, k: int, seed: int) -> list[list[int]]:
    """Indices 0..n-1, shuffled with ``np.random.RandomState(seed)``, cut into ``k`` parts whose sizes differ by
    at most one."""
    if k < 2 or k > n:
        raise MedsegError(f"training.folds: {k} folds need between 2 and {n} cases (the dataset has {n})")
    order = np.random.RandomState(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(order, k)]


def fold_split(cases: Sequence[T], parts: list[list[int]], fold: int) -> tuple[list[T], list[T]]:
    """(training, validation) of ``fold``: part ``fold`` validates, the other parts train."""
    if not 0 <= fold < len(parts):
        raise MedsegError(f"--fold {fold}: choose 0 to {len(parts) - 1} (training.folds = {len(parts)})")
    val = set(parts[fold])
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in sorted(val)]
