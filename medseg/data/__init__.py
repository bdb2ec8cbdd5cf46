"""Datasets: layouts on disk (MSD, nnU-Net, CSV, folders), DICOM and other image I/O, the built-in LiTS sample."""

from __future__ import annotations

from medseg.data.case import Case
from medseg.data.layouts import all_cases, load_dataset
from medseg.data.msd import load_msd_dataset
from medseg.data.sample import prepare_lits_sample

__all__ = ["Case", "all_cases", "load_dataset", "load_msd_dataset", "prepare_lits_sample"]
