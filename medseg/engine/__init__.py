"""Training and validation under MONAI's engines."""

from __future__ import annotations

from medseg.engine.inference import evaluate_cases
from medseg.engine.trainer import TrainResult, train

__all__ = ["TrainResult", "train", "evaluate_cases"]
