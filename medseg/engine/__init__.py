"""Training and validation under MONAI's engines: builders of the parts (``builders``), handler classes
(``handlers``), and ``train`` assembling them (``trainer``).

``train`` and ``TrainResult`` load on first use (deferred: the engine's light modules, losses, optimisers,
precision, checkpoints, distributed, import without the I/O and transform stack).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        # deferred: the light engine modules import without the I/O and transform stack (see the docstring)
        from medseg.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'medseg.engine' has no attribute {name!r}")
