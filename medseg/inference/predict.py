"""One case through the prediction chain: preprocessing, sliding windows, post-processing."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, Compose, LoadImaged

from medseg.errors import MedsegError
from medseg.inference.chain import InferenceChain, build_chain
from medseg.inference.engines import Forward, torch_forward


def check_preprocessed(chain: InferenceChain, image: MetaTensor, source: Any) -> MetaTensor:
    """``image`` (the chain's preprocessed input of ``source``), or one line when the network cannot take it: other
    channels than it takes (an RGB picture for a grey network), NaN/inf voxels (they would spread over windows)."""
    if chain.in_channels is not None and image.shape[0] != chain.in_channels:
        raise MedsegError(f"{source}: {image.shape[0]} image channels; the network takes {chain.in_channels}")
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise MedsegError(f"{source}: NaN/inf voxels in the image; replace them (e.g. by the background value)")
    return image


def check_finite(image: torch.Tensor, source: Any) -> None:
    """One line for NaN/inf voxels in an image as it was read: a CT window clips them to finite values, and
    ``CropForegroundd`` crops an image of nothing but NaN to no voxels at all, so after preprocessing they no
    longer show (the case came out as a plausible, or an empty, mask)."""
    if not image.is_floating_point():
        return
    if bool(torch.isfinite(image.sum())):  # a finite sum: every voxel finite (no mask allocated for a big CT)
        return
    bad = int(image.numel() - torch.isfinite(image).sum())
    if bad:
        raise MedsegError(f"{source}: {bad} NaN/inf voxel(s) in the image; replace them (e.g. by the background"
                          " value)")


def _preprocess(chain: InferenceChain, item: dict[str, Any]) -> dict[str, Any]:
    """``chain.preprocessing(item)``, with the image checked for NaN/inf (:func:`check_finite`) right after it is
    loaded, before any step can hide them."""
    pre = chain.preprocessing
    steps = list(getattr(pre, "transforms", ()))
    load = next((i for i, step in enumerate(steps) if isinstance(step, LoadImaged)), None)
    if load is None or not isinstance(pre, Compose):
        return pre(item)
    data = pre(item, end=load + 1)
    if isinstance(data, dict) and isinstance(data.get("image"), torch.Tensor):
        check_finite(data["image"], item["image"])
    return pre(data, start=load + 1)


def run_case(chain: InferenceChain, forward: Forward, item: dict[str, Any], device: torch.device | str = "cpu",
             tta: bool = False) -> MetaTensor:
    """The chain's output for one case: the label map ``(1, *spatial)`` on the input grid, post-processed.

    Args:
        chain: see :class:`InferenceChain`.
        forward: what the inferer runs on each window batch (:mod:`medseg.inference.engines`).
        item: ``{"image": path}`` (a file or a DICOM series folder; other keys are carried along).
        device: where the network input goes.
        tta: average the chain's activation (softmax) over mirrored copies of the input (every combination
            of axes, 2^d forward runs); needs a post-processing that starts with ``Activationsd``.

    Example:
        >>> labels = run_case(build_chain(cfg), torch_forward(net), {"image": "ct.nii.gz"})
    """
    data = _preprocess(chain, dict(item))
    image = check_preprocessed(chain, data["image"], item["image"])
    batch = image.unsqueeze(0).to(device)
    post = chain.postprocessing
    with torch.no_grad():
        if tta:
            activation, post = _split_activation(post)
            data["pred"] = mirrored_mean(chain, forward, batch, activation)
        else:
            data["pred"] = chain.inferer(batch, forward)[0]
        return post(data)["pred"]


def mirrored_mean(chain: InferenceChain, forward: Forward, batch: torch.Tensor, activation: Activationsd) -> torch.Tensor:
    """Mean of ``activation(inferer(flip(x)))`` flipped back, over every combination of spatial axes."""
    dims = list(range(2, batch.ndim))
    flips = [list(c) for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]
    total = None
    for axes in flips:
        x = torch.flip(batch, axes) if axes else batch
        logits = chain.inferer(x, forward)
        logits = torch.flip(logits, axes) if axes else logits
        p = activation({"pred": logits[0]})["pred"]
        total = p if total is None else total.add_(p)
    return total.div_(len(flips))


def _split_activation(post: Compose) -> tuple[Activationsd, Compose]:
    steps = list(post.transforms)
    if not steps or not isinstance(steps[0], Activationsd):
        raise MedsegError("--tta: this bundle's postprocessing does not start with Activationsd (class probabilities"
                          " to average); run it without --tta")
    return steps[0], Compose(steps[1:])


def predict_case(cfg: Any, net: torch.nn.Module, case: dict[str, Any], device: torch.device | str = "cpu",
                 tta: bool = False, chain: InferenceChain | None = None) -> MetaTensor:
    """:func:`run_case` for a medseg task config and a torch network (``chain`` default: :func:`build_chain`)."""
    return run_case(chain or build_chain(cfg), torch_forward(net), case, device, tta)
