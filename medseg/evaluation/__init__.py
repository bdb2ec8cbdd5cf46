"""Segmentation metrics in millimetres, per case and per class, and their summaries."""

from __future__ import annotations

from medseg.evaluation.metrics import METRICS, evaluate_case, summarise, write_reports

__all__ = ["METRICS", "evaluate_case", "summarise", "write_reports"]
