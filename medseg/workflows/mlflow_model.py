"""``medseg.predict`` as an MLflow ``pyfunc`` model: what :meth:`medseg.tracking.Tracker.log_model` logs for each run
(models-from-code: the logged model's code file imports this class; no pickled object in the model)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import torch

from medseg.bundle.load import load_bundle
from medseg.data.labelmaps import case_name
from medseg.errors import MedsegError
from medseg.workflows.predict import predict_one

def _check_unique(images: list[str], out_dir: Path) -> None:
    """One line when two different inputs are one case (``a.nii.gz`` and ``a.nrrd``, ``x/a.nii.gz`` and
    ``y/a.nii.gz``): both masks would be written to ``<output_dir>/<case>_seg.nii.gz``, the second over the first."""
    first: dict[str, str] = {}
    for image in images:
        name = case_name(Path(image))
        if name in first and Path(first[name]).resolve() != Path(image).resolve():
            raise MedsegError(f"image column: {first[name]} and {image} are both case '{name}' (both masks would be "
                              f"{out_dir / (name + '_seg.nii.gz')}); predict them in separate calls or rename one")
        first.setdefault(name, image)


# no type hints on purpose (the explicit signature carries the output_dir param): MLflow's advice to add them is
# kept out of the console (recorded, not shown; MLflow installs its own "once" filter, so a filter cannot)
with warnings.catch_warnings(record=True):

    class BundleModel(mlflow.pyfunc.PythonModel):
        """The bundle's prediction: a column ``image`` of NIfTI/NRRD/MHA paths or DICOM series folders in; each case's
        mask written as ``<case>_seg.nii.gz`` in the input's own geometry, as ``medseg.predict`` writes it (same
        function); the input and mask paths out. Param ``output_dir`` (default ``predictions``)."""

        def load_context(self, context: Any) -> None:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.bundle = load_bundle(Path(context.artifacts["bundle"]), self.device)

        def predict(self, context, model_input, params=None):
            out_dir = Path((params or {}).get("output_dir") or "predictions")
            column = model_input["image"] if isinstance(model_input, (pd.DataFrame, dict)) else model_input
            images = [str(p) for v in column for p in (v if isinstance(v, (list, tuple)) else [v])]
            _check_unique(images, out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            masks = [str(predict_one(self.bundle, Path(image), out_dir / f"{case_name(Path(image))}_seg.nii.gz",
                                     self.device)) for image in images]
            return pd.DataFrame({"image": images, "mask": masks})
