"""``python -m medseg.export RUN_DIR [--out DIR]``: write a finished run's MONAI Bundle (again).

Training does this at its end; this command redoes it from what the run directory holds: the
resolved ``config.yaml``, ``checkpoints/best.pt`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from medseg.errors import MedsegError, run_cli


def export_run(run_dir: Path, out: Path | None = None) -> Path:
    """Export the bundle of ``run_dir`` to ``out`` (default: the config's ``bundle.dir``); returns its path."""
    import torch

    from medseg.bundle import export_bundle
    from medseg.networks import build_network

    needed = [run_dir / "config.yaml", run_dir / "checkpoints" / "best.pt", run_dir / "metrics.json"]
    for path in needed:
        if not path.is_file():
            raise MedsegError(f"{path}: missing; is {run_dir} a finished medseg training run?")
    cfg = yaml.safe_load(needed[0].read_text())
    if out is not None:
        cfg["bundle"]["dir"] = str(out.parent)
        cfg["bundle"]["name"] = out.name
    from medseg.transforms import input_channels

    net = build_network(cfg["network"], input_channels(cfg), len(cfg["data"]["labels"]))
    try:
        net.load_state_dict(torch.load(needed[1], map_location="cpu", weights_only=True))
    except RuntimeError as err:
        raise MedsegError(f"{needed[1]}: weights do not fit the network in config.yaml ({str(err).splitlines()[0]})") from err
    summary = json.loads(needed[2].read_text())
    seconds = None
    if (run_dir / "run.json").is_file():
        seconds = json.loads((run_dir / "run.json").read_text()).get("seconds")
    return export_bundle(cfg, run_dir, net, summary, seconds)


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medseg.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training run directory (runs/<task>/<timestamp>)")
    parser.add_argument("--out", type=Path, help="bundle folder to write (default: bundles/<bundle name>)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        raise MedsegError(f"{args.run_dir}: no such run directory")
    print(f"bundle written to {export_run(args.run_dir, args.out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
