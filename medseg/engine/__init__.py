"""Training and validation under MONAI's engines."""

from __future__ import annotations

from medseg.engine.trainer import TrainResult, train
from medseg.engine.inference import evaluate_cases

__all__ = ["TrainResult", "train", "evaluate_cases"]
