"""``models/model.onnx`` in every bundle: the network exported with ``torch.onnx.export``, checked against PyTorch.

What is exported is the network inside :class:`~medseg.networks.padding.PadToMultiple` (traced at the training
patch, where the wrapper pads nothing); the ONNX engine (:mod:`medseg.inference.engines`) wraps the session in
the same padding, so any input size still works. The batch axis is always dynamic; the spatial axes are
dynamic except for networks whose graph fixes them (:data:`STATIC_SPATIAL`: UNETR has a fixed input size,
Swin UNETR's traced attention masks depend on the window count).

The check runs ONNX Runtime on a random patch (batch 2, the training patch) and records the largest absolute
difference to PyTorch's logits in ``metadata.json`` (``medseg_onnx``); a difference above
:data:`MAX_ABS_DIFF` is refused.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.networks.padding import PadToMultiple
from medseg.transforms import input_channels

OPSET = 17
#: networks exported with fixed spatial axes (the training patch)
STATIC_SPATIAL = {"unetr", "swin_unetr"}
#: largest |ONNX - torch| logit difference accepted at export
MAX_ABS_DIFF = 1e-3


def core_network(network: torch.nn.Module) -> torch.nn.Module:
    """The network without its size-padding wrapper, on the CPU in eval mode (a copy: ``network`` is untouched)."""
    inner = network.net if isinstance(network, PadToMultiple) else network
    return copy.deepcopy(inner).cpu().eval()


def dynamic_spatial(cfg: Any) -> bool:
    net = cfg.network
    return "args" not in net or net.name not in STATIC_SPATIAL


def export_onnx(network: torch.nn.Module, path: Path, patch: list[int], in_channels: int,
                dynamic: bool = True) -> None:
    """Write ``network`` (eval mode; its padding wrapper left out) to ``path`` as ONNX, traced on one patch."""
    inner = core_network(network)
    x = torch.zeros(1, in_channels, *patch)
    axes = {0: "batch", **({i + 2: f"size{i}" for i in range(len(patch))} if dynamic else {})}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on Python-int shape arithmetic of the networks
        # the TorchScript-based exporter: the dynamo one needs onnxscript besides onnx
        torch.onnx.export(inner, (x,), buffer, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=["pred"], dynamic_axes={"image": axes, "pred": axes})
    path.write_bytes(buffer.getvalue())


def check_onnx(network: torch.nn.Module, path: Path, patch: list[int], in_channels: int, seed: int = 0) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's logits on a random patch (batch 2)."""
    import onnxruntime as ort  # deferred: only export and the onnxruntime engine need it

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, in_channels, *patch, generator=gen)
    with torch.no_grad():
        ref = core_network(network)(x)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x.numpy()})[0]
    if out.shape != tuple(ref.shape):
        raise MedsegError(f"{path}: ONNX output {out.shape} differs from PyTorch's {tuple(ref.shape)}")
    return float(np.abs(out - ref.numpy()).max())


def write_onnx(bundle_dir: Path, cfg: Any, network: torch.nn.Module) -> dict[str, Any]:
    """``models/model.onnx`` of ``bundle_dir``, checked; returns what ``metadata.json`` records about it."""
    patch = [int(p) for p in cfg.training.patch_size]
    channels = input_channels(cfg)
    dynamic = dynamic_spatial(cfg)
    path = bundle_dir / "models" / "model.onnx"
    export_onnx(network, path, patch, channels, dynamic)
    diff = check_onnx(network, path, patch, channels)
    if not diff <= MAX_ABS_DIFF:
        raise MedsegError(f"{path}: ONNX Runtime differs from PyTorch by {diff:.3g} on a random patch "
                          f"(limit {MAX_ABS_DIFF}); report the network '{cfg.network.name}'")
    # what a caller of the bare graph must pad to (medseg's engines and model.ts pad themselves): a multiple per
    # axis, at least a minimum, or the fixed size of a static graph
    padding = network if isinstance(network, PadToMultiple) else None
    sizes = {"spatial_multiple": padding.multiple if padding else 1, "spatial_minimum": padding.minimum if padding else 0,
             "spatial_size": list(padding.size) if padding and padding.size else (None if dynamic else patch)}
    return {"file": "models/model.onnx", "opset": OPSET, "dynamic_spatial": dynamic, **sizes, "checked_patch": patch,
            "max_abs_diff": diff}


__all__ = ["MAX_ABS_DIFF", "OPSET", "STATIC_SPATIAL", "check_onnx", "core_network", "export_onnx", "write_onnx"]
