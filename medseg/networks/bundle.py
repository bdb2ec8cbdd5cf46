"""The network side of a MONAI Bundle: own network code in ``scripts/``, the inferer, the loss, ``model.ts``.

Export format per network (``models/model.ts``, MONAI's ``ckpt_export``): TorchScript by scripting for
every network except ``swin_unetr``, which MONAI's SwinUNETR cannot be scripted (its checkpointing
wrapper takes ``**kwargs``); that one is TorchScript by tracing at the training patch size (see
:data:`TRACED`). ``inference.json`` rebuilds every network from ``network_def`` + ``model.pt`` either way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai import inferers
from monai.bundle import ckpt_export

from medseg.networks import REGISTRY, _legacy, input_multiple, network_args

#: networks exported by ``torch.jit.trace`` (scripting fails in MONAI's class); the rest are scripted
TRACED = {"swin_unetr"}


def inferer_def(cfg: dict[str, Any], sw_batch_size: int = 2) -> dict[str, Any]:
    """The inferer as a bundle config entry: sliding windows of the training patch, or in slice mode MONAI's
    ``SliceInferer`` (the 2D network on every slice across ``network.slice_axis``, stacked back to a volume)."""
    net, patch = cfg.network or {}, list(cfg.training.patch_size)
    entry = {"roi_size": patch, "sw_batch_size": sw_batch_size, "overlap": cfg.evaluation.sw_overlap,
             "mode": "gaussian"}
    padding = (cfg.inference or {}).padding_mode
    if padding != "constant":  # overlap-tile: windows over the border read the mirrored image (MONAI's padding_mode)
        entry["padding_mode"] = padding
    if net.slice_mode:
        return {"_target_": "SliceInferer", "spatial_dim": int(net.slice_axis), **entry,
                "sw_batch_size": max(sw_batch_size, 8), "progress": False}
    return {"_target_": "SlidingWindowInferer", **entry}


def build_inferer(cfg: dict[str, Any], sw_batch_size: int = 2):
    """:func:`inferer_def` instantiated (MONAI's ``SlidingWindowInferer`` or ``SliceInferer``)."""
    entry = inferer_def(cfg, sw_batch_size)
    return getattr(inferers, entry.pop("_target_"))(**entry)


def loss_def(cfg: dict[str, Any], loss: dict[str, Any]) -> dict[str, Any]:
    """Wrap a bundle loss entry in MONAI's ``DeepSupervisionLoss`` when the network trains on aux outputs."""
    net = cfg.network
    if _legacy(net) or not net.deep_supervision:
        return loss
    return {"_target_": "DeepSupervisionLoss", "loss": loss, "weight_mode": "exp",
            "weights": [float(w) for w in net.ds_weights] or None}


def export_torchscript(bundle_dir: Path, cfg: dict[str, Any], in_channels: int) -> str:
    """Write ``models/model.ts`` with MONAI's ``ckpt_export`` (a traced network sees one patch of ``in_channels``);
    returns ``"script"`` or ``"trace"``."""
    traced = cfg.network.name in TRACED and not _legacy(cfg.network)
    extra: dict[str, Any] = {}
    if traced:
        extra = {"use_trace": True, "input_shape": [1, in_channels, *cfg.training.patch_size]}
    ckpt_export(
        net_id="network_def", filepath=str(bundle_dir / "models" / "model.ts"),
        ckpt_file=str(bundle_dir / "models" / "model.pt"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        config_file=str(bundle_dir / "configs" / "inference.json"), **extra,
    )
    return "trace" if traced else "script"


def spatial_shape(cfg: dict[str, Any]) -> list[str | int]:
    """``network_data_format`` spatial shape: ``"k*n"`` per axis, or the fixed size (UNETR)."""
    net = cfg.network
    dims = int(net.spatial_dims)
    if not _legacy(net):
        spec = REGISTRY[net.name]
        if spec.fixed_size:
            return [int(s) for s in network_args(net)[spec.fixed_size]]
    return [f"{input_multiple(net)}*n"] * dims


@contextmanager
def bundle_scripts(bundle_dir: Path) -> Iterator[None]:
    """Make ``bundle_dir/scripts`` importable as ``scripts`` (as ``monai.bundle run`` does from the bundle
    root), so ``scripts.medseg_networks.*`` targets resolve in-process; restored afterwards."""
    saved = {m: sys.modules.pop(m) for m in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]}
    root = str(bundle_dir.resolve())
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for m in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[m]
        sys.modules.update(saved)
