"""Click-guided training (``interactive.enabled``): simulated clicks in the guidance channels, as DeepEdit.

The preprocessing appends one zero guidance channel per label to the image
(:class:`medseg.transforms.guidance.AddGuidanced`); validation and automatic prediction run with those zeros.
During training, :class:`ClickIteration` (the trainer's ``iteration_update``) fills them per sample before the
usual training step: with probability ``interactive.auto_prob`` no clicks (the automatic segmentation is
trained too); otherwise, for half of them, 1 to ``max_clicks`` corrections of the network's automatic mask (as a
user starts) and, for the other half, one initial click inside each label present in the patch (background:
near the foreground, where the image is not 0) then up to ``max_clicks - 1`` corrections. Each correction runs
the network (eval mode, no gradients) on the current guidance and clicks the centre of the largest error
region of one kind in its prediction, away from earlier clicks, with the true label there (missed foreground:
a positive click on that class; a false region: a click on background).

Own loop and click rule, not ``monai.apps.deepedit``'s Interaction + FindDiscrepancyRegionsDeepEditd /
AddRandomGuidanceDeepEditd: those draw a random voxel of the discrepancy on numpy copies per label name; medseg
clicks the largest error component's centre (the voxel farthest from its border) as a user would, and its
guidance lives in the image tensor the trainer already has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cc3d
import numpy as np
import torch
from scipy import ndimage

from medseg.transforms.guidance import draw_click
from medseg.transforms.settings import guidance_channels

logger = logging.getLogger("medseg.train")

Click = list  # [i, j, k, label]


def initial_clicks(label: np.ndarray, n_labels: int, rng: np.random.Generator,
                   image: np.ndarray | None = None, margin: int = 3) -> list[Click]:
    """One click at a random voxel inside each label value ``0..n_labels-1`` present in ``label`` (spatial).

    With ``image`` (the first image channel, same grid) the background click is drawn where the image is not 0
    and within ``margin`` voxels of the labelled foreground (anywhere in the background when there is no such
    voxel): a click in the patch's zero padding or far out in the air tells the network nothing."""
    clicks = []
    for value in range(n_labels):
        inside = label == value
        if value == 0 and image is not None and (label > 0).any():
            near = inside & (image != 0) & ndimage.binary_dilation(label > 0, iterations=margin)
            inside = near if near.any() else inside
        where = np.argwhere(inside)
        if len(where):
            clicks.append([*where[rng.integers(len(where))].tolist(), value])
    return clicks


def largest_error_click(pred: np.ndarray, label: np.ndarray, earlier: Sequence[Click] = (),
                        exclude: float = 2.0) -> Click | None:
    """The voxel deepest inside (farthest from the border of) the largest connected error region, with the true
    label there; None when nothing is left to click.

    An error region is of one kind (one true label where one other label was predicted: missed liver and false
    liver are separate regions, as MONAI's DeepEdit discrepancy maps keep them), so the click lands inside what
    it should fix rather than on a thin shell mixing both. Voxels within ``exclude`` voxels of an ``earlier``
    click are left out: a click the network did not follow is not repeated (a repeat adds nothing to its
    guidance map)."""
    errors = pred != label
    if earlier:
        near = np.zeros(errors.shape, dtype=bool)
        for click in earlier:
            near[tuple(int(c) for c in click[: errors.ndim])] = True
        errors &= ndimage.distance_transform_edt(~near) > exclude
    if not errors.any():
        return None
    kinds = label.astype(np.int64) * (int(max(pred.max(), label.max())) + 1) + pred.astype(np.int64) + 1
    components = cc3d.connected_components(np.where(errors, kinds, 0), connectivity=6 if errors.ndim == 3 else 4)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    region = components == int(sizes.argmax())
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[tuple(slice(1, -1) for _ in region.shape)]
    point = np.unravel_index(int(depth.argmax()), region.shape)
    return [*map(int, point), int(label[point])]


def _logits(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output  # deep supervision: the main output


class ClickIteration:
    """``iteration_update`` for MONAI's SupervisedTrainer: simulated clicks into the guidance channels
    (the last ``n_labels`` of ``batch["image"]``), then the trainer's own iteration (loss, backward, step)."""

    def __init__(self, n_labels: int, max_clicks: int, sigma: float, auto_prob: float, seed: int = 0,
                 correct_prob: float = 0.5) -> None:
        self.n_labels, self.max_clicks, self.sigma, self.auto_prob = n_labels, max_clicks, sigma, auto_prob
        self.correct_prob = correct_prob  # of the guided samples: no initial clicks, corrections of the automatic mask
        self.rng = np.random.default_rng(seed)

    def simulate(self, network: torch.nn.Module, image: torch.Tensor, label: torch.Tensor,
                 device: torch.device | str = "cpu") -> list[list[Click]]:
        """Fill ``image``'s guidance channels in place (``image``: ``(B, C + n_labels, *spatial)``, ``label``:
        ``(B, 1, *spatial)`` label values); returns each sample's clicks."""
        g0 = image.shape[1] - self.n_labels
        image[:, g0:] = 0
        labels = label[:, 0].detach().cpu().numpy().astype(np.int64)
        first = image[:, 0].detach().cpu().numpy()
        clicks: list[list[Click]] = []
        rounds: dict[int, int] = {}
        for b in range(image.shape[0]):
            if self.rng.random() < self.auto_prob:  # the automatic segmentation: no clicks
                clicks.append([])
                rounds[b] = 0
            elif self.rng.random() < self.correct_prob:  # as a user starts: corrections of the automatic mask
                clicks.append([])
                rounds[b] = int(self.rng.integers(1, self.max_clicks + 1))
            else:  # DeepEdit's start: one click per label present, then corrections
                clicks.append(initial_clicks(labels[b], self.n_labels, self.rng, first[b]))
                rounds[b] = int(self.rng.integers(0, self.max_clicks))
        for b, sample in enumerate(clicks):
            for click in sample:
                draw_click(image[b, g0 + click[-1]], click[:-1], self.sigma)
        for step in range(max(rounds.values(), default=0)):
            active = [b for b, n in rounds.items() if n > step]
            with torch.no_grad():
                was_training = network.training
                network.eval()
                try:
                    pred = _logits(network(image[active].to(device))).argmax(1).cpu().numpy()
                finally:
                    network.train(was_training)
            for row, b in enumerate(active):
                click = largest_error_click(pred[row], labels[b], clicks[b])
                if click is None:
                    rounds[b] = 0
                    continue
                clicks[b].append(click)
                draw_click(image[b, g0 + click[-1]], click[:-1], self.sigma)
        return clicks

    def __call__(self, engine: Any, batchdata: dict[str, Any]) -> dict:
        self.simulate(engine.network, batchdata["image"], batchdata["label"], engine.state.device)
        return engine._iteration(engine, batchdata)  # the trainer's own step, as monai.apps.deepedit's Interaction


def trainer_arguments(cfg: Any) -> dict[str, Any]:
    """SupervisedTrainer keyword arguments for ``interactive`` (``{}`` when it is off)."""
    if not guidance_channels(cfg):
        return {}
    ia = cfg.interactive
    return {"iteration_update": ClickIteration(guidance_channels(cfg), ia.max_clicks, ia.sigma, ia.auto_prob,
                                               seed=cfg.training.seed)}


def simulate_session(predict: Any, label: np.ndarray, n_clicks: int,
                     exclude: float = 2.0) -> tuple[list[Click], list[np.ndarray]]:
    """The standard interactive benchmark on one case: ``predict(clicks) -> label map`` (same grid as ``label``),
    starting with no clicks, each next click at the centre of the largest error region not within ``exclude``
    voxels of an earlier click. Returns the clicks and the ``n_clicks + 1`` predictions (0, 1, ... clicks)."""
    clicks: list[Click] = []
    preds = [predict(clicks)]
    for _ in range(n_clicks):
        click = largest_error_click(preds[-1], label, clicks, exclude)
        if click is None:
            preds.append(preds[-1])
            continue
        clicks.append(click)
        preds.append(predict(list(clicks)))
    return clicks, preds

