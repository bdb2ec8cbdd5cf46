"""Datasets: layouts on disk (MSD) and the built-in LiTS sample."""

from __future__ import annotations

from medseg.data.msd import load_msd_dataset
from medseg.data.sample import prepare_lits_sample

__all__ = ["load_msd_dataset", "prepare_lits_sample"]
