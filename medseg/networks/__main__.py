"""``python -m medseg.networks [--dims 2|3] [--size ...]``: every network with its parameters and multiply-accumulates.

Counts come from one forward pass on the ``meta`` device (shapes only, no arithmetic, no memory), with
torch's ``FlopCounterMode``; multiply-accumulates = FLOPs / 2. Each network is built with its registry
defaults (``--set`` changes a shorthand key or argument for all of them where it applies).

Example:
    python -m medseg.networks --dims 2 --size 256 256
    python -m medseg.networks --dims 3 --size 96 96 64 --classes 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from medseg.errors import MedsegError, run_cli
from medseg.networks import REGISTRY, build_on_meta, input_multiple

DEFAULT_SIZE = {2: [256, 256], 3: [96, 96, 64]}


def count(name: str, dims: int, size: list[int], in_channels: int = 1, classes: int = 2,
          args: dict | None = None) -> dict[str, float | int | str]:
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


def _human(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medseg.networks", description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="2D or 3D networks (default 3)")
    parser.add_argument("--size", type=int, nargs="+", help="input size, one value per axis "
                        "(default 256 256 in 2D, 96 96 64 in 3D)")
    parser.add_argument("--classes", type=int, default=2, help="output channels (default 2)")
    parser.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    size = args.size or DEFAULT_SIZE[args.dims]
    if len(size) != args.dims or any(s < 1 for s in size):
        raise MedsegError(f"--size {' '.join(map(str, size))}: give {args.dims} positive values for --dims {args.dims}")
    for flag, value in (("--classes", args.classes), ("--in-channels", args.in_channels)):
        if value < 1:
            raise MedsegError(f"{flag} {value}: give 1 or more")
    print(f"{args.dims}D networks at their default widths, input {args.in_channels} x {' x '.join(map(str, size))},"
          f" {args.classes} classes (MACs = multiply-accumulates, FLOPs / 2)")
    print(f"{'network':<16}{'parameters':>14}{'MACs':>12}{'multiple':>10}  paper")
    for name in REGISTRY:
        try:
            row = count(name, args.dims, list(size), args.in_channels, args.classes)
        except (MedsegError, RuntimeError, ValueError) as err:  # e.g. a size too small for its norm or patches
            print(f"{name:<16}{'-':>14}{'-':>12}{'-':>10}  not available: {err}")
            continue
        print(f"{name:<16}{row['params'] / 1e6:>12.2f} M{_human(row['macs']):>12}{row['multiple']:>10}  {row['paper']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
