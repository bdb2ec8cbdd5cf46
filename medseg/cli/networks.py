"""``python -m medseg.networks [--dims 2|3] [--size ...]``: every network with its parameters and multiply-accumulates.

Counts come from one forward pass on the ``meta`` device (shapes only, no arithmetic, no memory), with
torch's ``FlopCounterMode``; multiply-accumulates = FLOPs / 2. Each network is built with its registry
defaults. The body is :func:`medseg.workflows.networks.table`.

Example:
    python -m medseg.networks --dims 2 --size 256 256
    python -m medseg.networks --dims 3 --size 96 96 64 --classes 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.networks", description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="2D or 3D networks (default 3)")
    parser.add_argument("--size", type=int, nargs="+", help="input size, one value per axis "
                        "(default 256 256 in 2D, 96 96 64 in 3D)")
    parser.add_argument("--classes", type=int, default=2, help="output channels (default 2)")
    parser.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def human(value: float) -> str:
    """``1234567`` -> ``"1.23 M"``."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing torch and MONAI
    from medseg.workflows import networks

    rows = networks.table(args.dims, args.size, args.in_channels, args.classes)
    size = args.size or networks.DEFAULT_SIZE[args.dims]
    print(f"{args.dims}D networks at their default widths, input {args.in_channels} x {' x '.join(map(str, size))},"
          f" {args.classes} classes (MACs = multiply-accumulates, FLOPs / 2)")
    print(f"{'network':<16}{'parameters':>14}{'MACs':>12}{'multiple':>10}  paper")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<16}{'-':>14}{'-':>12}{'-':>10}  not available: {row['error']}")
            continue
        print(f"{row['name']:<16}{row['params'] / 1e6:>12.2f} M{human(row['macs']):>12}{row['multiple']:>10}"
              f"  {row['paper']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
