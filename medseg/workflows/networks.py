"""Every registered network with its parameters and multiply-accumulates, as plain functions (the body of
``python -m medseg.networks``).

Counts come from one forward pass on the ``meta`` device (shapes only, no arithmetic, no memory), with
torch's ``FlopCounterMode``; multiply-accumulates = FLOPs / 2. Each network is built with its registry
defaults.

Example (a notebook):
    >>> from medseg.workflows import networks
    >>> networks.count("unet", dims=2, size=[256, 256])["params"]
    31031810
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from medseg.errors import MedsegError
from medseg.networks import REGISTRY, build_on_meta, input_multiple

DEFAULT_SIZE = {2: [256, 256], 3: [96, 96, 64]}


def count(name: str, dims: int, size: list[int], in_channels: int = 1, classes: int = 2,
          args: dict | None = None) -> dict[str, Any]:
    """Parameters and multiply-accumulates of network ``name`` for one input of ``size`` (batch 1)."""
    spec = REGISTRY[name]
    net_args = dict(args or {})
    if spec.fixed_size:
        net_args.setdefault(spec.fixed_size, list(size))
    cfg = {"name": name, "spatial_dims": dims, "args": net_args}
    net = build_on_meta(cfg, in_channels, classes).eval()
    x = torch.empty(1, in_channels, *size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    params = sum(p.numel() for p in net.parameters())
    return {"name": name, "params": params, "macs": counter.get_total_flops() / 2, "multiple": input_multiple(cfg),
            "paper": spec.paper}


def table(dims: int = 3, size: Sequence[int] | None = None, in_channels: int = 1,
          classes: int = 2) -> list[dict[str, Any]]:
    """:func:`count` for every registered network; a network that cannot take this input (a size too small
    for its norm or patches) gets ``{"name", "error"}`` instead. Bad arguments raise ``MedsegError``."""
    size = list(size or DEFAULT_SIZE.get(dims, []))
    if dims not in DEFAULT_SIZE:
        raise MedsegError(f"--dims {dims}: the networks are 2D or 3D")
    if len(size) != dims or any(s < 1 for s in size):
        raise MedsegError(f"--size {' '.join(map(str, size))}: give {dims} positive values for --dims {dims}")
    for flag, value in (("--classes", classes), ("--in-channels", in_channels)):
        if value < 1:
            raise MedsegError(f"{flag} {value}: give 1 or more")
    rows = []
    for name in REGISTRY:
        try:
            rows.append(count(name, dims, size, in_channels, classes))
        except (MedsegError, RuntimeError, ValueError) as err:
            rows.append({"name": name, "error": str(err)})
    return rows
