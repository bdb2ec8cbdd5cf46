"""Segmentation metrics in millimetres, per case and per class, and their summaries."""

from __future__ import annotations

from medseg.evaluation.metrics import METRICS, binary_metrics, evaluate_case, format_table, summarise, write_reports

__all__ = ["METRICS", "binary_metrics", "evaluate_case", "format_table", "summarise", "write_reports"]
