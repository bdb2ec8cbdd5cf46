"""Compare the U-Net family on the liver sample: parameters, training speed, validation Dice after the same budget.

Every network trains for the same wall-clock budget (``--seconds``, default 60) on the built-in LiTS sample
with medseg's own preprocessing and augmentation (the ``liver`` task in 3D, ``liver_2d`` in 2D slice mode),
then predicts the validation volume (sliding windows, or slice by slice in 2D) and reports liver and tumour
Dice on the preprocessed grid. Widths are set so every network fits the budget on 2 CPU cores
(:data:`WIDTHS`); the samples/s column is patches (3D) or slices (2D) per second of training, data
loading included (the same loader for every network, so the ratio between networks is the network's).

Run it on a quiet machine, pinned to 2 cores (about 8 x (seconds + 20) s, ~11 min at the default):

    taskset -c 0,1 .venv/bin/python benchmarks/bench_networks.py            # 3D, 60 s per network
    taskset -c 0,1 .venv/bin/python benchmarks/bench_networks.py --dims 2   # 2D networks on axial slices
    .venv/bin/python benchmarks/bench_networks.py --only unet unetpp --seconds 30
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monai.data import CacheDataset, DataLoader  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

from medseg.config import load_config  # noqa: E402
from medseg.data import load_msd_dataset, prepare_lits_sample  # noqa: E402
from medseg.engine.builders import sliding_window_inferer  # noqa: E402
from medseg.engine.losses import build_loss  # noqa: E402
from medseg.networks import REGISTRY, build_network, wrap_deep_supervision  # noqa: E402
from medseg.transforms import build_eval_transforms, build_train_transforms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import need, run  # noqa: E402

#: per network: --set overrides (widths that fit a short CPU budget; the same family-typical depth of 5 levels)
WIDTHS = {
    "unet": ["network.channels=[16,32,64,128,256]", "network.norm=batch"],
    "resunet": [],  # the liver task's network (MONAI UNet, 16..256, 2 residual units, batch norm)
    "attention_unet": ["network.channels=[16,32,64,128,256]"],
    "unetpp": ["network.channels=[16,16,32,64,128]", "network.deep_supervision=true"],
    "unet3p": ["network.channels=[16,32,64,128,256]", "network.norm=batch", "network.deep_supervision=true"],
    "unetr": ["network.args={feature_size: 16, hidden_size: 384, mlp_dim: 1536, num_heads: 6}"],
    "swin_unetr": ["network.args={feature_size: 24}"],
    "light_unet": [],  # its own CPU-sized defaults (8..64, 4 levels at half resolution and below)
}
#: settings shared by every network; sizes fit every network's multiple and minimum (SwinUNETR: 64; 2D: liver_2d's slices)
COMMON = {3: ["training.patch_size=[64,64,64]", "training.batch_size=2"],
          2: ["training.patch_size=[80,128]", "training.batch_size=16"]}


def dice(pred: torch.Tensor, ref: torch.Tensor) -> float:
    inter = float((pred & ref).sum())
    total = float(pred.sum() + ref.sum())
    return 1.0 if total == 0 else 2 * inter / total


def run_one(name: str, dims: int, seconds: float, data_dir: Path) -> dict:
    task = "liver" if dims == 3 else "liver_2d"
    # liver_2d names the 2D unet's channels and norm: clear them, then apply this network's widths
    reset = ["network.channels=null", "network.norm=null"] if dims == 2 else []
    overrides = ["tracking.enabled=false", f"network.name={name}", *COMMON[dims], *reset, *WIDTHS[name]]
    cfg = load_config(task, overrides)
    tr = cfg.training
    set_determinism(seed=tr.seed)
    torch.set_num_threads(tr.threads or torch.get_num_threads())
    root = prepare_lits_sample(data_dir)
    train_files, val_files = load_msd_dataset(root, cfg.data.labels, cfg.data.val_fraction, tr.seed)
    train_ds = CacheDataset(train_files, build_train_transforms(cfg), cache_rate=1.0, progress=False)
    sampler = torch.utils.data.RandomSampler(train_ds, replacement=True, num_samples=10**6)
    loader = DataLoader(train_ds, batch_size=tr.batch_size, sampler=sampler, num_workers=0)
    net = build_network(cfg.network, 1, len(cfg.data.labels))
    params = sum(p.numel() for p in net.parameters())
    loss_fn = wrap_deep_supervision(build_loss(tr), cfg.network)
    opt = torch.optim.AdamW(net.parameters(), lr=tr.learning_rate, weight_decay=tr.weight_decay)
    samples, started = 0, time.monotonic()
    net.train()
    for batch in loader:
        opt.zero_grad()
        loss = loss_fn(net(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
        samples += batch["image"].shape[0]
        if time.monotonic() - started >= seconds:
            break
    train_s = time.monotonic() - started
    net.eval()
    scores = {"liver": [], "tumour": []}
    inferer = sliding_window_inferer(cfg)
    transforms = build_eval_transforms(cfg)
    with torch.no_grad():
        for case in val_files:
            data = transforms(dict(case))
            pred = inferer(data["image"].unsqueeze(0).as_tensor(), net).argmax(1)[0]
            ref = data["label"][0].as_tensor().long()
            scores["liver"].append(dice(pred > 0, ref > 0))
            scores["tumour"].append(dice(pred == 2, ref == 2))
    return {"name": name, "params": params, "samples_per_s": samples / train_s, "samples": samples,
            "liver": sum(scores["liver"]) / len(scores["liver"]), "tumour": sum(scores["tumour"]) / len(scores["tumour"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per network (wall clock)")
    parser.add_argument("--only", nargs="+", choices=list(REGISTRY), help="networks to run (default: all)")
    parser.add_argument("--data-dir", type=Path, help="where the LiTS sample is (or is prepared); default: a temp dir")
    args = parser.parse_args(argv)
    if args.data_dir is not None and args.data_dir.exists():
        need(args.data_dir, "--data-dir", "folder", "where the LiTS sample is or is prepared")
    logging.getLogger("medseg").setLevel(logging.WARNING)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench_networks_"))
    print(f"{args.dims}D, {args.seconds:.0f} s training per network, {torch.get_num_threads()} threads")
    print(f"| network | parameters | training samples/s | samples | val Dice liver | val Dice tumour |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.only or list(REGISTRY):
        r = run_one(name, args.dims, args.seconds, data_dir)
        print(f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['samples_per_s']:.2f} | {r['samples']} |"
              f" {r['liver']:.3f} | {r['tumour']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
