"""MONAI Bundle export and verification."""

from __future__ import annotations

from medseg.bundle.export import SCHEMA_PATH, export_bundle, verify_bundle

__all__ = ["SCHEMA_PATH", "export_bundle", "verify_bundle"]
