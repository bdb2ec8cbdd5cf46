"""medseg: medical image segmentation on MONAI, from a task YAML to a MONAI Bundle."""

from __future__ import annotations

__version__ = "0.1.0"
