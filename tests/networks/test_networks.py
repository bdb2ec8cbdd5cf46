"""The network registry: every U-Net family member in 2D and 3D, sizes, export, learning, deep supervision,
slice mode (2D networks on 3D volumes) and the bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from medseg.config import load_config
from medseg.engine.checks import check_task
from medseg.errors import MedsegError
from medseg.networks import REGISTRY, build_network, build_on_meta, check_network, n_outputs, wrap_deep_supervision
from medseg.networks.__main__ import main as networks_main
from medseg.networks.bundle import TRACED
from medseg.workflows.networks import count

from tests.conftest import FAST, write_msd

#: tiny widths per network: enough to test shapes, gradients, export and learning in seconds
TINY = {
    "unet": {"channels": [4, 8, 16]},
    "resunet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "attention_unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "unetpp": {"channels": [4, 4, 8, 8, 16]},
    "unet3p": {"channels": [4, 8, 16]},
    "unetr": {"feature_size": 4, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4},
    "light_unet": {"channels": [4, 8, 16]},
}
#: small widths that still learn one image within a few dozen steps (the TINY ones learn too slowly)
OVERFIT = {
    "unet": {"channels": [8, 16, 32], "norm": "batch"},
    "resunet": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "attention_unet": {"channels": [8, 16, 32], "strides": [2, 2]},
    "unetpp": {"channels": [8, 8, 16, 16, 32]},
    "unet3p": {"channels": [8, 16, 32]},
    "unetr": {"img_size": [32, 32], "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
    "swin_unetr": {"norm_name": "batch", "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                   "window_size": 4},
    "light_unet": {"channels": [8, 16, 32]},
}
ODD = {2: (37, 29), 3: (19, 13, 11)}  # UNETR's fixed input size below covers them; the rest pad to their multiple


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread is as fast, and two spin-wait badly when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(name: str, dims: int, size=None, **extra) -> dict:
    args = dict(TINY[name])
    if name == "unetr":
        args["img_size"] = ([48, 32] if dims == 2 else [32, 16, 16]) if size is None else list(size)
    return {"name": name, "spatial_dims": dims, "args": args, **extra}


def test_registry_covers_the_family():
    assert set(REGISTRY) == {"unet", "resunet", "attention_unet", "unetpp", "unet3p", "unetr", "swin_unetr", "light_unet"}
    for name, spec in REGISTRY.items():  # a one-line paper citation in each registry entry and class docstring
        assert spec.paper and spec.cls.__doc__, name
    assert set(TINY) == set(REGISTRY)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_on_odd_sizes(name: str, dims: int):
    torch.manual_seed(0)
    ds = REGISTRY[name].deep_supervision
    net = build_network(tiny_cfg(name, dims, deep_supervision=ds), 1, 3)
    x = torch.rand(1, 1, *ODD[dims])
    out = net(x)
    outputs = out if isinstance(out, list) else [out]
    assert len(outputs) == (n_outputs(tiny_cfg(name, dims, deep_supervision=True)) if ds else 1)
    assert outputs[0].shape == (1, 3, *ODD[dims])  # the main output has the input's size
    for aux in outputs[1:]:  # aux outputs: same or lower resolution, never larger
        assert aux.shape[:2] == (1, 3) and all(a <= s for a, s in zip(aux.shape[2:], ODD[dims]))
    sum(o.square().mean() for o in outputs).backward()
    # MONAI's transformer blocks always hold a cross-attention norm that self-attention never uses
    grads = [p.grad for k, p in net.named_parameters() if "norm_cross_attn" not in k]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    net.eval()
    with torch.no_grad():
        main = net(x)
    assert isinstance(main, torch.Tensor) and main.shape == (1, 3, *ODD[dims])  # eval: main output only


def test_original_unet_2d_has_31m_parameters():
    net = build_on_meta({"name": "unet", "spatial_dims": 2, "args": {}}, 1, 2)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 31.03e6) < 0.02e6, n  # Ronneberger et al. 2015: ~31 M with 64..1024 features
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 18 and len(ups) == 4 and all(u.kernel_size == (2, 2) for u in ups)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # batch norm is optional, off
    with_bn = build_on_meta({"name": "unet", "spatial_dims": 2, "norm": "batch", "args": {}}, 1, 2)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules()) == 18


@pytest.mark.parametrize("name", list(TINY))
def test_export_round_trip_and_eval_determinism(name: str, tmp_path: Path):
    torch.manual_seed(0)
    net = build_network(tiny_cfg(name, 2, deep_supervision=REGISTRY[name].deep_supervision), 1, 2).eval()
    x = torch.rand(1, 1, *{"swin_unetr": (64, 64), "unetr": (48, 32)}.get(name, (48, 48)))
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)  # deterministic in eval mode
        exported = torch.jit.trace(net, x) if name in TRACED else torch.jit.script(net)
        torch.jit.save(exported, tmp_path / "model.ts")
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
        torch.testing.assert_close(loaded(x), ref)
        if name not in TRACED:  # scripted: other sizes go through the same padding and cropping
            y = torch.rand(1, 1, *((41, 29) if name == "unetr" else (45, 47)))
            torch.testing.assert_close(loaded(y), net(y))


@pytest.mark.slow  # a training (100 steps) per network
@pytest.mark.parametrize("name", list(TINY))
def test_each_network_overfits_one_image(name: str):
    """Proof that it learns: one 32x32 image/label pair to Dice > 0.9 within 100 Adam steps."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    label = ((yy - 14) ** 2 / 64 + (xx - 17) ** 2 / 36 <= 1).long()[None, None]
    image = label.float() + 0.3 * torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = {"name": name, "spatial_dims": 2, "args": OVERFIT[name], "deep_supervision": REGISTRY[name].deep_supervision}
    net = build_network(cfg, 1, 2)
    loss_fn = wrap_deep_supervision(DiceCELoss(to_onehot_y=True, softmax=True), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    dice = 0.0
    for step in range(1, 101):
        net.train()
        opt.zero_grad()
        loss_fn(net(image), label.float()).backward()  # float labels, as loaded from files
        opt.step()
        if step % 5 == 0:
            net.eval()
            with torch.no_grad():
                pred = net(image).argmax(1, keepdim=True) == 1
            dice = 2 * float((pred & (label == 1)).sum()) / float(pred.sum() + (label == 1).sum())
            if dice > 0.9:
                break
    assert dice > 0.9, f"{name}: Dice {dice:.3f} after {step} steps"


def test_deep_supervision_outputs_are_in_the_loss():
    cfg = tiny_cfg("unet3p", 2, deep_supervision=True, ds_weights=[1.0, 0.5, 0.25])
    net = build_network(cfg, 1, 2).train()
    x, y = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    outputs = net(x)
    assert len(outputs) == 3 and outputs[1].shape[2:] == (16, 16) and outputs[2].shape[2:] == (8, 8)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = wrap_deep_supervision(base, cfg)
    total = float(loss(outputs, y))
    expected = sum(w * float(base(o, torch.nn.functional.interpolate(y, o.shape[2:], mode="nearest-exact")))
                   for w, o in zip([1.0, 0.5, 0.25], outputs))
    assert total == pytest.approx(expected, rel=1e-5)
    changed = [outputs[0], outputs[1] * 5.0, outputs[2]]  # only an auxiliary output changes
    assert float(loss(changed, y)) != pytest.approx(total, rel=1e-4)
    assert wrap_deep_supervision(base, {**cfg, "deep_supervision": False}) is base  # no aux: the loss itself
    # gradients reach the auxiliary heads only through the loss
    loss(outputs, y).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.net.aux_heads.parameters())


def test_unetpp_prunes_at_inference():
    torch.manual_seed(0)
    cfg = tiny_cfg("unetpp", 2, deep_supervision=True)
    net = build_network(cfg, 1, 2)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        columns = net.train()(x)  # [x_0_4, x_0_3, x_0_2, x_0_1]; instance norm: same in train and eval
        for depth in (1, 2, 3, 4):
            net.net.prune_depth = depth
            torch.testing.assert_close(net.eval()(x), columns[4 - depth])
    pruned = build_network({**cfg, "args": {**cfg["args"], "prune_depth": 2}}, 1, 2)
    assert pruned.net.prune_depth == 2


def test_config_selects_networks_and_refuses_bad_input(tmp_path: Path):
    cfg = load_config("liver", ["network.name=unetpp", "network.deep_supervision=true",
                                "network.args={prune_depth: 3}", "network.ds_weights=[1, 0.5, 0.25, 0.1]"])
    assert cfg.network.args == {"prune_depth": 3}
    unetr = load_config("liver", ["network.name=unetr", "network.args.feature_size=8"])
    assert unetr.network.args == {"feature_size": 8, "img_size": [64, 96, 96]}  # filled from the patch
    assert load_config("liver").network.name == "resunet"  # the default network is the one liver used
    bad = {
        "network.name=vnet": r"network\.name.*'vnet'.*choose one of.*attention_unet.*light_unet",
        "network.args={widht: 3}": r"network\.args\.widht: not an argument of network 'resunet'; it takes channels",
        "network.num_res_units=2 --- network.name=unet": r"network\.num_res_units: network 'unet' does not take it",
        "network.deep_supervision=true": r"network\.deep_supervision: network 'resunet' has no auxiliary outputs",
        "network.name=unet3p --- network.deep_supervision=true --- network.ds_weights=[1, 0.5]":
            r"network\.ds_weights' needs 5 non-negative weights",
        "network.name=unet3p --- network.deep_supervision=true --- network.ds_weights=[a, b, c, d, e]":
            r"network\.ds_weights' needs 5 non-negative weights",
        "network.spatial_dims=2 --- training.patch_size=[64,96,96]":
            r"network\.spatial_dims is 2 but training\.patch_size has 3.*network\.slice_mode: true",
        "training.patch_size=[30,32,32]": r"must be multiples of 16",
        "network.name=unet --- network.channels=[8,16] --- training.patch_size=[6,6,5]": r"must be multiples of 2",
    }
    for overrides, message in bad.items():  # schema errors at load, the network's own through check_task
        with pytest.raises(MedsegError, match=message):
            check_task(load_config("liver", overrides.split(" --- ")))


def test_cli_exit_code_2_for_a_2d_network_on_3d_patches(tmp_path: Path, capsys):
    from medseg.train import main as train_main

    assert train_main(["liver", "--data-dir", str(tmp_path), "--set", "network.spatial_dims=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "network.slice_mode: true" in err
    assert train_main(["liver", "--data-dir", str(tmp_path), "--set", "network.name=nonet"]) == 2
    assert "unetpp" in capsys.readouterr().err


def test_listing_command_counts_parameters_and_macs(capsys):
    assert networks_main(["--dims", "2", "--size", "64", "64"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert f"\n{name} " in out
    assert "31.03 M" in out
    row = count("unet", 2, [64, 64], classes=2, args={"channels": [4, 8]})
    # by hand: 2 convs 3x3 at 64x64 (1->4, 4->4), pool, 2 at 32x32 (4->8, 8->8), up 2x2 (8->4) at 64x64,
    # 2 convs at 64x64 (8->4, 4->4), head 1x1 (4->2)
    hw, q = 64 * 64, 32 * 32
    macs = hw * 9 * (1 * 4 + 4 * 4) + q * 9 * (4 * 8 + 8 * 8) + hw * 4 * 8 + hw * 9 * (8 * 4 + 4 * 4) + hw * 4 * 2
    assert row["macs"] == macs
    assert networks_main(["--dims", "3", "--size", "32", "32"]) == 2
    assert networks_main(["--classes", "0"]) == 2
    assert "--classes 0: give 1 or more" in capsys.readouterr().err
    assert networks_main(["--dims", "3", "--size", "8", "8", "8"]) == 0  # too small for some: their rows say why
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "not available" in rows["unetr"] and "not available" in rows["unetpp"]
    assert "not available" not in rows["resunet"]


def test_slice_sampling_gives_whole_2d_slices_with_foreground(lits_sample):
    from medseg.transforms import build_eval_transforms, build_train_transforms

    cfg = load_config("liver_2d", ["augmentation.rotate_prob=0", "augmentation.scale_prob=0",
                                   "augmentation.flip_prob=0", "augmentation.intensity_prob=0"])
    case = {"image": str(lits_sample / "imagesTr" / "lits_sample_train.nii.gz"),
            "label": str(lits_sample / "labelsTr" / "lits_sample_train.nii.gz")}
    chain = build_train_transforms(cfg)
    chain.set_random_state(seed=0)
    volume = build_eval_transforms(cfg)(dict(case))
    for _ in range(3):
        sample = chain(dict(case))[0]
        assert tuple(sample["image"].shape) == (1, 80, 128) and tuple(sample["label"].shape) == (1, 80, 128)
        # the whole slice (x by y) of the volume fits in the patch: all its foreground is there
        assert sample["label"].max() > 0
    assert tuple(volume["image"].shape[1:3]) == (80, 128)  # the x-y plane the patches above were cut from


@pytest.mark.slow  # a training run, then the bundle in a stock-MONAI subprocess
def test_slice_inference_and_bundle_on_stock_monai(tmp_path: Path, monkeypatch):
    """Slice mode end to end with an own network and deep supervision: training on 2D slices of synthetic
    volumes, SliceInferer validation, and a bundle whose inference.json runs on stock MONAI (no medseg)."""
    import nibabel as nib
    from monai.inferers import SliceInferer

    from medseg.engine.builders import sliding_window_inferer
    from medseg.train import main as train_main

    from tests.workflows.test_train import stock_monai

    dataset = write_msd(tmp_path / "data" / "Synthetic")
    overrides = [o for o in FAST if not o.startswith(("network.", "training.patch_size"))] + [
        "data.dataset=Synthetic", f"bundle.dir={tmp_path / 'bundles'}", "tracking.enabled=false",
        "network.name=unet3p", "network.spatial_dims=2", "network.slice_mode=true", "network.channels=[4,8,16]",
        "network.deep_supervision=true", "network.ds_weights=[1.0,0.5,0.25]", "training.patch_size=[16,16]",
    ]
    cfg = load_config("liver", overrides)
    inferer = sliding_window_inferer(cfg)
    assert isinstance(inferer, SliceInferer) and inferer.spatial_dim == 2
    monkeypatch.chdir(tmp_path)
    args = ["liver", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run")]
    assert train_main(args + [a for o in overrides for a in ("--set", o)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"liver", "tumour"}  # 3D metrics from slice-by-slice prediction
    bundle = tmp_path / "bundles" / "liver_ct_segmentation"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["inferer"]["_target_"] == "SliceInferer"
    assert inference["network_def"]["net"]["_target_"] == "scripts.medseg_networks.UNet3Plus"
    train_json = json.loads((bundle / "configs" / "train.json").read_text())
    assert train_json["loss"]["_target_"] == "DeepSupervisionLoss" and train_json["loss"]["weights"] == [1.0, 0.5, 0.25]
    assert (bundle / "scripts" / "medseg_networks" / "unet3p.py").is_file()

    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    net = build_network(cfg.network, 1, 3)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 21, 19)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net.eval()(x))

    images = tmp_path / "images"
    images.mkdir()
    image = nib.load(dataset / "imagesTr" / "case_000.nii.gz")
    nib.save(image, images / "scan.nii.gz")
    proc = stock_monai(tmp_path, "run", "--config_file", str(bundle / "configs" / "inference.json"),
                       "--bundle_root", str(bundle), "--dataset_dir", str(images), "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    seg = nib.load(next((tmp_path / "out").rglob("*.nii.gz")))
    assert seg.shape[:3] == image.shape and np.allclose(seg.affine, image.affine, atol=1e-4)


def test_check_network_fills_and_checks_in_place():
    cfg = load_config("liver", ["network.name=swin_unetr", "training.patch_size=[64,64,64]"])
    check_network(cfg, "x")
    assert cfg.network.args == {}
    with pytest.raises(MedsegError, match=r"must be multiples of 32"):
        check_task(load_config("liver", ["network.name=swin_unetr", "training.patch_size=[48,48,48]"]))


STATE_DICTS = json.loads((Path(__file__).parent.parent / "fixtures" / "network_state_dicts.json").read_text())


@pytest.mark.parametrize("case", sorted(STATE_DICTS))
def test_own_networks_keep_the_state_dict_and_outputs_of_old_checkpoints(case):
    """Old checkpoints load: the state-dict names and shapes of each own network (2D and 3D, with and without
    deep supervision) are those recorded from medseg/networks/own.py before the split into one file per
    architecture, and the same weights give the same outputs."""
    entry = STATE_DICTS[case]
    net = build_network(entry["config"], 2, 3)
    state = {k: "x".join(map(str, v.shape)) for k, v in net.state_dict().items()}
    assert state == entry["state"]
    with torch.no_grad():  # the deterministic weights the fixture was recorded with
        for i, (key, t) in enumerate(sorted(net.state_dict().items())):
            if t.is_floating_point():
                values = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.37 + i).reshape(t.shape) * 0.5
                t.copy_(values.to(t.dtype) + (1.0 if "running_var" in key else 0.0))
    dims = entry["config"]["spatial_dims"]
    x = torch.linspace(-1, 1, 2 * 20 ** dims).reshape(1, 2, *[20] * dims)
    with torch.no_grad():
        y = net.eval()(x).double()
    assert [float(y.mean()), float(y.std())] == pytest.approx(entry["output"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_light_unet_has_dense_convolutions_below_full_resolution(dims: int):
    """The CPU-sized layout: no grouped (depthwise) convolution, and only the first convolution reads the input's
    full resolution (it halves it); the logits are upsampled back to the input's size."""
    from medseg.networks.light_unet import LightUNet

    net = LightUNet(dims, 1, 3, channels=(4, 8, 16)).eval()
    size = (32, 24) if dims == 2 else (16, 32, 24)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, tuple(i[0].shape[2:]), tuple(o.shape[2:]))))
             for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    with torch.no_grad():
        out = net(torch.rand(1, 1, *size))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 3, *size)
    assert all(m.groups == 1 for m, _, _ in seen)
    assert seen[0][1] == size and seen[0][2] == tuple(s // 2 for s in size)
    assert all(all(a <= s // 2 for a, s in zip(inp, size)) for _, inp, _ in seen[1:])
    from medseg.networks import input_multiple

    assert input_multiple({"name": "light_unet", "spatial_dims": dims, "args": {"channels": [4, 8, 16]}}) == 8
