"""One case being corrected by clicks (what ``medseg.serve`` holds per open case), as plain Python.

The case runs once through the bundle's prediction chain (:mod:`medseg.inference`: preprocessing, sliding
windows, post-processing back onto the input's grid); the logits on the preprocessed grid are kept. A click
(voxel of the input, class, positive or negative) changes the logits in a window around it, then the same
post-processing gives the new mask:

- **click-guided bundle** (``interactive.enabled``): the click goes into the guidance channels (positive: the
  class's channel; negative: background's) and the network reruns on the window around it
  (``interactive.window`` voxels, default the training patch: one forward pass), with every click so far;
- **any other bundle**: a local correction from the model's own probabilities: a positive click gives the class
  the connected region around the click where its probability is at least half the probability at the click
  (a ball of 3 voxels where that is under 0.05); a negative click takes the class's connected region under the
  click away (the next most likely class wins there).

Undo restores the window's logits (and drops the click). Saving writes ``<case>_seg.nii.gz`` (and
``<case>_seg.dcm``, a DICOM SEG, for a DICOM series) and ``<case>_clicks.json`` (clicks, times, changed
voxels: no patient identifiers), atomically.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch

from medseg import __version__
from medseg.bundle.load import LoadedBundle
from medseg.data.dicom_seg import write_dicom_seg
from medseg.data.labelmaps import write_label_nifti
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text
from medseg.inference import torch_forward
from medseg.transforms.guidance import draw_click, map_clicks
from medseg.transforms.settings import guidance_channels

#: case names: letters, digits, ``._-``, not starting with a dot (so never ``..`` or a path)
CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_case_name(name: str) -> str:
    """``name`` if it is a safe case name (no path separators, no ``..``), else a one-line error."""
    if not CASE_NAME.match(name) or ".." in name:
        raise MedsegError(f"case name {name!r}: use letters, digits, '.', '_' and '-' only (no paths, no '..')")
    return name


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused unless it stays directly inside ``folder``."""
    path = (folder / check_case_name(name)).resolve()
    if path.parent != folder.resolve():
        raise MedsegError(f"case name {name!r}: would leave the output folder {folder}")
    return path


@dataclass
class Step:
    click: dict[str, Any]
    box: tuple[slice, ...]
    old: torch.Tensor  # logits in the box before the click


@dataclass
class CaseSession:
    """An open case: its image on the input grid, the logits on the preprocessed grid, the current mask."""

    bundle: LoadedBundle
    name: str
    path: Path
    device: torch.device | str = "cpu"
    window: list[int] | None = None
    steps: list[Step] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_case_name(self.name)
        started = time.perf_counter()
        chain = self.bundle.chain
        self.forward = torch_forward(self.bundle.network)
        self.data = chain.preprocessing({"image": str(self.path)})
        image = self.data["image"]
        cfg = self.bundle.cfg
        self.n_guidance = guidance_channels(cfg) if cfg is not None else 0
        self.sigma = float(cfg.interactive.sigma) if self.n_guidance else 0.0
        self.g0 = image.shape[0] - self.n_guidance
        if self.window is None:
            custom = list(cfg.interactive.window) if cfg is not None else []
            patch = list(cfg.training.patch_size) if cfg is not None else [96, 96, 96]
            self.window = custom or patch  # one network window around the click
        with torch.no_grad():
            self.logits = chain.inferer(image.unsqueeze(0).to(self.device), self.forward)[0]
        self.labels, self.affine = self._post()
        self.auto_seconds = time.perf_counter() - started

    # ---- geometry

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.labels.shape)

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0)]

    def image_array(self) -> np.ndarray:
        """The image on the input grid (first channel), float32, for display."""
        loader = self.bundle.chain.preprocessing.transforms[0]  # the chain's own LoadImaged
        raw = loader({"image": str(self.path)})["image"]
        array = np.asarray(raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw, dtype=np.float32)
        if array.ndim == 4:  # channel-last from the reader
            array = array[..., 0]
        if array.shape != self.shape:
            raise MedsegError(f"{self.path}: image {array.shape} and mask {self.shape} grids differ")
        return np.ascontiguousarray(array)

    def _post(self) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            pred = self.bundle.chain.postprocessing({**self.data, "pred": self.logits.clone()})["pred"]
        affine = np.asarray(pred.affine, dtype=np.float64) if hasattr(pred, "affine") else np.eye(4)
        labels = pred[0].detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)[0]
        return labels.astype(np.uint8), affine

    def _to_grid(self, voxel: list[float], label: int) -> list[int]:
        image = self.data["image"]
        mapped = map_clicks([[*voxel, label]], image.meta["original_affine"], image.affine)[0]
        point = [int(round(v)) for v in mapped[:-1]]
        if any(p < 0 or p >= n for p, n in zip(point, image.shape[1:])):
            raise MedsegError(f"click {voxel}: outside the region the model sees (cropped as background)")
        return point

    def _box(self, point: list[int]) -> tuple[slice, ...]:
        spatial = self.logits.shape[1:]
        box = []
        for p, w, n in zip(point, self.window, spatial):
            lo = max(0, min(p - w // 2, n - w))
            box.append(slice(lo, min(n, lo + w)))
        return tuple(box)

    # ---- clicks

    def click(self, voxel: list[float], label: int, positive: bool = True) -> dict[str, Any]:
        """Apply one click (``voxel`` on the input grid, ``label`` a foreground class); returns its log entry."""
        started = time.perf_counter()
        n_labels = self.logits.shape[0]
        if len(voxel) != len(self.shape) or any(not 0 <= v < n for v, n in zip(voxel, self.shape)):
            raise MedsegError(f"click {voxel}: outside the image {list(self.shape)}")
        if not 1 <= int(label) < n_labels:
            raise MedsegError(f"click class {label}: choose one of 1..{n_labels - 1}")
        target = int(label) if positive else 0
        point = self._to_grid(voxel, target)
        box = self._box(point)
        before = self.labels
        step = Step({"voxel": [int(v) for v in voxel], "label": int(label), "positive": bool(positive)},
                    box, self.logits[(slice(None), *box)].clone())
        if self.n_guidance:
            self._rerun(point, target, box)
            mode = "guided rerun"
        else:
            self._local(point, int(label), positive, box)
            mode = "local correction"
        self.labels, self.affine = self._post()
        self.steps.append(step)
        entry = {**step.click, "mode": mode, "changed_voxels": int((self.labels != before).sum()),
                 "seconds": round(time.perf_counter() - started, 4)}
        self.log.append(entry)
        return entry

    def _rerun(self, point: list[int], target: int, box: tuple[slice, ...]) -> None:
        image = self.data["image"]
        draw_click(image[self.g0 + target], point, self.sigma)
        with torch.no_grad():
            window = image[(slice(None), *box)].unsqueeze(0).to(self.device)
            self.logits[(slice(None), *box)] = self.bundle.chain.inferer(window, self.forward)[0]

    def _local(self, point: list[int], label: int, positive: bool, box: tuple[slice, ...]) -> None:
        logits = self.logits[(slice(None), *box)]
        q = tuple(p - s.start for p, s in zip(point, box))
        prob = torch.softmax(logits.float(), 0)
        if positive:
            at = float(prob[(label, *q)])
            if at >= 0.05:
                candidates = (prob[label] >= 0.5 * at).cpu().numpy()
            else:
                grid = np.indices(logits.shape[1:])
                candidates = sum((g - c) ** 2 for g, c in zip(grid, q)) <= 9
            region = _component_at(candidates, q)
            logits[label][torch.from_numpy(region)] = logits.max(0).values[torch.from_numpy(region)] + 1.0
        else:
            region = _component_at((prob.argmax(0) == label).cpu().numpy(), q)
            if region.any():
                logits[label][torch.from_numpy(region)] = logits.min(0).values[torch.from_numpy(region)] - 1.0

    def _redraw_guidance(self) -> None:
        image = self.data["image"]
        image[self.g0:] = 0
        for step in self.steps:
            target = step.click["label"] if step.click["positive"] else 0
            draw_click(image[self.g0 + target], self._to_grid(step.click["voxel"], target), self.sigma)

    def undo(self) -> bool:
        """Take the last click back; False when there is none."""
        if not self.steps:
            return False
        step = self.steps.pop()
        self.logits[(slice(None), *step.box)] = step.old
        if self.n_guidance:
            self._redraw_guidance()
        self.labels, self.affine = self._post()
        self.log.append({"undo": step.click})
        return True

    # ---- saving

    def save(self, out_dir: Path) -> list[Path]:
        """``<case>_seg.nii.gz`` (+ ``<case>_seg.dcm`` for DICOM input) and ``<case>_clicks.json``, atomically."""
        out_dir.mkdir(parents=True, exist_ok=True)
        nifti = inside(out_dir, f"{self.name}_seg.nii.gz")
        write_label_nifti(self.labels, self.affine, nifti, source=self.path)
        written = [nifti]
        if self.path.is_dir():  # a DICOM series
            names = {v: k for v, k in self.bundle.labels.items() if v != 0}
            written.append(write_dicom_seg(self.labels, self.affine, self.path, inside(out_dir, f"{self.name}_seg.dcm"),
                                           names, self.bundle.name, __version__))
        log = inside(out_dir, f"{self.name}_clicks.json")
        record = {"case": self.name, "bundle": self.bundle.name, "medseg": __version__,
                  "mode": "guided rerun" if self.n_guidance else "local correction",
                  "automatic_seconds": round(self.auto_seconds, 3), "events": self.log,
                  "labels": {int(v): str(k) for v, k in self.bundle.labels.items()}}
        atomic_write_text(log, json.dumps(record, indent=2) + "\n")
        return [*written, log]


def _component_at(mask: np.ndarray, point: tuple[int, ...]) -> np.ndarray:
    """The connected component of ``mask`` holding ``point`` (empty when ``point`` is outside the mask)."""
    if not mask[point]:
        return np.zeros_like(mask, dtype=bool)
    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=6 if mask.ndim == 3 else 4)
    return components == components[point]
