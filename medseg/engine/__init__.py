"""Training and validation under MONAI's engines.

``train`` and ``evaluate_cases`` load on first use, so the engine's light modules (losses, optimisers,
precision, checkpoints, distributed) import without the I/O and evaluation stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train", "evaluate_cases"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        from medseg.engine import trainer

        return getattr(trainer, name)
    if name == "evaluate_cases":
        from medseg.engine.inference import evaluate_cases

        return evaluate_cases
    raise AttributeError(f"module 'medseg.engine' has no attribute {name!r}")
