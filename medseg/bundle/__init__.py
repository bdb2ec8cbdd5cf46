"""MONAI Bundle export and verification.

``export_bundle``, ``verify_bundle`` and ``SCHEMA_PATH`` load :mod:`medseg.bundle.export` on first use (PEP 562):
prediction imports :mod:`medseg.bundle.load` only, not the export side (training builders, losses, INT8
calibration, MONAI's bundle scripts).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA_PATH", "export_bundle", "verify_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # deferred: start-up time of medseg.predict (see the docstring)
        from medseg.bundle import export

        return getattr(export, name)
    raise AttributeError(f"module 'medseg.bundle' has no attribute {name!r}")
