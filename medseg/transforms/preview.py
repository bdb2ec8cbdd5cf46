"""The augmentation preview's patches: training patches as sampled, and the same patches after augmentation.

:func:`preview_pairs` runs the training sampler and the random augmentation, seeded; the grid drawn from
them (:func:`medseg.evaluation.figures.write_preview`) is what ``python -m medseg.preview`` writes and what
training logs to MLflow (``augmentation_preview.png``).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from monai.transforms import Compose

from medseg.transforms.pipeline import build_eval_transforms, crop_spec, instantiate, random_spec, weight_map_spec


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) else x


def preview_pairs(cfg: dict[str, Any], cases: list[dict[str, Any]], n: int = 8, seed: int = 0,
                  max_cases: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` tuples ``(patch image, patch label, augmented image, augmented label)`` (first image channel),
    from up to ``max_cases`` cases in turn, with the seeded training sampler and augmentation; with a weighted
    loss a fifth item, the augmented U-Net weight map (the one the loss sees)."""
    pre = Compose([build_eval_transforms(cfg), *instantiate(weight_map_spec(cfg))])
    crop, rand = Compose(instantiate(crop_spec(cfg))), Compose(instantiate(random_spec(cfg)))
    crop.set_random_state(seed=seed)
    rand.set_random_state(seed=seed + 1)
    chosen = cases[: max(1, min(max_cases, len(cases)))]
    volumes = [pre(dict(c)) for c in chosen]
    pairs = []
    for i in range(n):
        patch = _first(crop(dict(volumes[i % len(volumes)])))
        augmented = rand(copy.deepcopy(patch))
        pair = tuple(np.asarray(d[k][0].detach().cpu().numpy()) for d in (patch, augmented) for k in ("image", "label"))
        if "weight" in augmented:
            pair += (np.asarray(augmented["weight"][0].detach().cpu().numpy()),)
        pairs.append(pair)
    return pairs
