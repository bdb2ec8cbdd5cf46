"""``auto`` keys of a pipeline YAML, planned: :class:`AutoFill` is the ``fill`` step of
:func:`medseg.config.load_config` (run on the merged YAML before validation). It plans the task's dataset with
the keys set by hand (in the YAML or by ``--set``) kept as given, and replaces every ``auto`` with the planned
value. The keys that only work together (dimensionality, spacing, patch, strides, channels) are planned as a
group: when one of them is ``auto``, the others of the group that are not set by hand are planned too.

``preprocessing.spacing: auto`` alone keeps its own meaning (the training set's median spacing, fitted by
:func:`medseg.transforms.fit_preprocessing`), so YAMLs written before the planner train as they did.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from medseg.data.locate import locate_dataset
from medseg.plan.planner import PLANNED_KEYS, Plan, plan_dataset

logger = logging.getLogger("medseg.plan")

COUPLED = ("preprocessing.spacing", "network.spatial_dims", "network.slice_mode", "network.slice_axis",
           "training.patch_size", "network.strides", "network.channels")
_MODALITY_LAYER = "medseg/config/registries.py (MODALITIES)"


def auto_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value is the string ``auto``."""
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            found.append(f"{prefix}{key}")
    return found


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A new dict with ``dotted`` set (``tree`` untouched)."""
    head, _, rest = dotted.partition(".")
    out = dict(tree)
    out[head] = _set(tree.get(head) or {}, rest, value) if rest else value
    return out


class AutoFill:
    """The ``fill`` step for :func:`load_config`: plans the ``auto`` keys; ``plan`` holds the plan used."""

    def __init__(self, data_dir: Path, budget_minutes: float = 15.0, device: str = "cpu") -> None:
        self.data_dir, self.budget_minutes, self.device = Path(data_dir), budget_minutes, device
        self.plan: Plan | None = None

    def __call__(self, merged: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
        # only planned keys: others where 'auto' is a value of their own (training.device) are the schema's
        autos = [k for k in auto_keys(merged) if k in PLANNED_KEYS]
        if not autos or autos == ["preprocessing.spacing"]:
            return merged
        by_hand = {k for k, src in origin.items() if src != _MODALITY_LAYER}
        hand = {k: _get(merged, k) for k in PLANNED_KEYS if k in by_hand and k not in autos}
        if "data.modality" in by_hand:
            hand["data.modality"] = merged["data"]["modality"]
        data = merged["data"]  # the merged YAML before validation: a plain dict
        where = SimpleNamespace(data=SimpleNamespace(dataset=data.get("dataset", ""), sample=data.get("sample", "")))
        root = locate_dataset(where, self.data_dir, explicit=False)
        labels = merged["data"]["labels"] if "data.labels" in by_hand else None
        self.plan = plan_dataset(root, modality=hand.get("data.modality"), labels=labels,
                                 budget_minutes=self.budget_minutes, device=self.device,
                                 network=merged["network"]["name"], hand=hand,
                                 skip_bad=bool(data.get("skip_bad")), label_map=data.get("label_map") or None)
        fill = set(autos)
        if fill & set(COUPLED):
            fill |= {k for k in COUPLED if k not in by_hand}
        out = merged
        for key in sorted(fill):
            if key in self.plan.decisions:
                out = _set(out, key, self.plan.decisions[key].value)
            elif key in autos:  # not decided for this family (strides of a network without them): its default
                out = _set(out, key, None)
        logger.info("planned %d auto key(s) from %s (plan %s): %s", len(autos), root, self.plan.hash,
                    ", ".join(autos))
        return out
