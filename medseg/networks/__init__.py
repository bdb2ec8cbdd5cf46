"""Network registry: the config's ``network`` section to a ``torch.nn.Module`` (the U-Net family, 2D and 3D).

The YAML names a network and, optionally, its arguments::

    network:
      name: unetpp              # python -m medseg.networks lists them all
      spatial_dims: 3
      channels: [16, 32, 64, 128, 256]   # shorthand keys: channels, strides, num_res_units, norm, dropout
      args: {prune_depth: 3}    # any other constructor argument of that network
      deep_supervision: true
      ds_weights: [1.0, 0.5, 0.25, 0.125]

A shorthand key left at ``null`` (the default) takes the network's own default; a key or argument the
network does not take is refused, naming it and listing the ones it takes. Every network is wrapped in
:class:`~medseg.networks.padding.PadToMultiple`, so any input size works (zero-padded to the multiple the
network needs, the output cropped back); training patches must still be multiples (checked up front).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from monai.losses import DeepSupervisionLoss
from monai.networks import nets as monai_nets

from medseg.config.registries import NETWORK_INPUT_SIZE, NETWORKS
from medseg.errors import MedsegError
from medseg.networks import blocks, light_unet, padding, unet, unet3p, unetpp
from medseg.networks.light_unet import LightUNet
from medseg.networks.padding import PadToMultiple
from medseg.networks.unet import OriginalUNet
from medseg.networks.unet3p import UNet3Plus
from medseg.networks.unetpp import UNetPlusPlus

#: shorthand keys of the ``network`` section that map onto a network's constructor arguments
SHORTHAND = ("channels", "strides", "num_res_units", "norm", "dropout")
#: the package of an exported bundle's scripts/ folder that holds medseg's own networks, the modules it
#: holds (torch and MONAI only, with relative imports between them) and the classes configs name from it
SCRIPT_PACKAGE = "medseg_networks"
SCRIPT_MODULES = (blocks, unet, light_unet, unet3p, unetpp, padding)
SCRIPT_CLASSES = (OriginalUNet, LightUNet, UNet3Plus, UNetPlusPlus, PadToMultiple)
_RESERVED = {"self", "spatial_dims", "in_channels", "out_channels", "deep_supervision"}


def _prod(values: Any) -> int:
    """Total stride; with per-axis strides (``[[2, 2, 1], ...]``, planned for anisotropic data) the largest
    axis's, so one multiple serves every axis."""
    if any(isinstance(v, (list, tuple)) for v in values):
        per_axis = [v if isinstance(v, (list, tuple)) else None for v in values]
        dims = max(len(v) for v in per_axis if v is not None)
        rows = [list(v) if v is not None else [int(s)] * dims for v, s in zip(per_axis, values)]
        return max(_prod([r[a] for r in rows]) for a in range(dims))
    out = 1
    for v in values:
        out *= int(v)
    return out


@dataclass(frozen=True)
class NetSpec:
    """How one registry name is built, exported and sized."""

    name: str
    cls: type
    paper: str
    defaults: dict[str, Any]
    multiple: Callable[[dict[str, Any]], int]
    aliases: dict[str, str] = field(default_factory=dict)  # shorthand key -> constructor argument
    deep_supervision: bool = False  # has auxiliary outputs
    n_outputs: Callable[[dict[str, Any]], int] = lambda a: 1  # main + aux outputs with deep supervision
    fixed_size: str | None = None  # constructor argument holding a fixed input size
    minimum: Callable[[dict[str, Any]], int] = lambda a: 0  # smallest input size per axis (inputs padded up)

    @property
    def target(self) -> str:
        """The class as a bundle config ``_target_`` (own classes live in the bundle's ``scripts/``)."""
        if self.cls in SCRIPT_CLASSES:
            return f"scripts.{SCRIPT_PACKAGE}.{self.cls.__name__}"
        return f"monai.networks.nets.{self.cls.__name__}"

    def arguments(self) -> list[str]:
        return [p for p in inspect.signature(self.cls.__init__).parameters if p not in _RESERVED]


def _levels(args: dict[str, Any]) -> int:
    return 2 ** (len(args["channels"]) - 1)


REGISTRY: dict[str, NetSpec] = {
    s.name: s
    for s in [
        NetSpec("unet", OriginalUNet, "Ronneberger et al., U-Net, MICCAI 2015",
                {"channels": [64, 128, 256, 512, 1024], "norm": None}, _levels,
                aliases={"channels": "channels", "norm": "norm", "dropout": "dropout"}),
        NetSpec("resunet", monai_nets.UNet, "Kerfoot et al., Left-Ventricle Quantification Using Residual U-Net, STACOM 2018",
                {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch",
                 "dropout": 0.0},
                lambda a: _prod(a["strides"]),
                aliases={k: k for k in SHORTHAND}),
        NetSpec("attention_unet", monai_nets.AttentionUnet, "Oktay et al., Attention U-Net, MIDL 2018",
                {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2]},
                lambda a: _prod(a["strides"]),
                aliases={"channels": "channels", "strides": "strides", "dropout": "dropout"}),
        NetSpec("unetpp", UNetPlusPlus, "Zhou et al., UNet++, DLMIA 2018",
                {"channels": [32, 32, 64, 128, 256]}, lambda a: 16,
                aliases={"channels": "channels", "norm": "norm", "dropout": "dropout"},
                deep_supervision=True, n_outputs=lambda a: 4),
        NetSpec("unet3p", UNet3Plus, "Huang et al., UNet 3+, ICASSP 2020",
                {"channels": [64, 128, 256, 512, 1024]}, _levels,
                aliases={"channels": "channels", "norm": "norm"},
                deep_supervision=True, n_outputs=lambda a: len(a["channels"])),
        NetSpec("unetr", monai_nets.UNETR, "Hatamizadeh et al., UNETR, WACV 2022",
                {}, lambda a: 16, aliases={"norm": "norm_name", "dropout": "dropout_rate"}, fixed_size="img_size"),
        NetSpec("swin_unetr", monai_nets.SwinUNETR, "Hatamizadeh et al., Swin UNETR, BrainLes 2021",
                {}, lambda a: int(a.get("patch_size", 2)) * 16,
                aliases={"norm": "norm_name", "dropout": "drop_rate"}, minimum=lambda a: int(a.get("patch_size", 2)) * 32),
        NetSpec("light_unet", LightUNet,
                "Ronneberger et al., U-Net, MICCAI 2015, at half resolution with strided convolutions (Kerfoot et al., STACOM 2018)",
                {"channels": [8, 16, 32, 64], "norm": "batch"}, lambda a: 2 ** len(a["channels"]),
                aliases={"channels": "channels", "norm": "norm"}),
    ]
}


# the names, classes and fixed-size arguments are medseg.config.registries' (what the config accepts)
assert list(REGISTRY) == NETWORKS.names(), "medseg.config.registries.NETWORKS and REGISTRY name the same networks"
assert all(NETWORKS.resolve(n) is s.cls and NETWORK_INPUT_SIZE.get(n) == s.fixed_size for n, s in REGISTRY.items())


def _section(net_cfg: Any) -> dict[str, Any]:
    """The ``network`` section as a plain mapping: a validated :class:`medseg.config.NetworkConfig` or a dict
    of its keys (tests and ``python -m medseg.networks`` build those; a stored legacy section has no ``args``)."""
    return net_cfg.to_dict() if hasattr(net_cfg, "to_dict") else net_cfg


def _spec(net_cfg: dict[str, Any]) -> NetSpec:
    net_cfg = _section(net_cfg)
    name = net_cfg.get("name")
    if name not in REGISTRY:
        raise MedsegError(f"network.name: '{name}' is not a known network; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _legacy(net_cfg: dict[str, Any]) -> bool:
    """A ``network`` section written before the registry (no ``args``): MONAI's UNet with its keys, as then."""
    net_cfg = _section(net_cfg)
    return "args" not in net_cfg


def network_args(net_cfg: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments (besides dims and channels in/out) the section resolves to, checked by name.

    A fixed-size network's input size (UNETR's ``img_size``) is among them: the config schema fills it from
    ``training.patch_size`` unless ``network.args`` gives it; building the network needs it.
    """
    net_cfg = _section(net_cfg)
    spec = _spec(net_cfg)
    args = copy.deepcopy(spec.defaults)
    known = spec.arguments()
    for key in SHORTHAND:
        value = net_cfg.get(key)
        if value is None:
            continue
        if key not in spec.aliases:
            takes = ", ".join(k for k in SHORTHAND if k in spec.aliases) or "none of them"
            raise MedsegError(
                f"network.{key}: network '{spec.name}' does not take it (of the shorthand keys it takes {takes});"
                f" remove it or set it to null"
            )
        args[spec.aliases[key]] = value
    for key, value in (net_cfg.get("args") or {}).items():
        if key not in known:
            hint = " (use network.deep_supervision)" if key == "deep_supervision" else ""
            raise MedsegError(
                f"network.args.{key}: not an argument of network '{spec.name}'{hint}; it takes {', '.join(known)}"
            )
        args[key] = value
    return args


def input_multiple(net_cfg: dict[str, Any]) -> int:
    """The factor each spatial input size must be divisible by (after padding, inputs always are)."""
    net_cfg = _section(net_cfg)
    if _legacy(net_cfg):
        return _prod(net_cfg["strides"])
    return int(_spec(net_cfg).multiple(network_args(net_cfg)))


def n_outputs(net_cfg: dict[str, Any]) -> int:
    """How many outputs the network returns in training (1 without deep supervision)."""
    net_cfg = _section(net_cfg)
    if _legacy(net_cfg) or not net_cfg.get("deep_supervision"):
        return 1
    return int(_spec(net_cfg).n_outputs(network_args(net_cfg)))


def _constructor(net_cfg: dict[str, Any], in_channels: int, out_channels: int) -> tuple[NetSpec, dict[str, Any]]:
    net_cfg = _section(net_cfg)
    spec = _spec(net_cfg)
    dims = int(net_cfg.get("spatial_dims", 3))
    if dims not in (2, 3):
        raise MedsegError(f"network.spatial_dims: {dims}; the networks are 2D or 3D")
    ds = bool(net_cfg.get("deep_supervision", False))
    if ds and not spec.deep_supervision:
        with_ds = ", ".join(n for n, s in REGISTRY.items() if s.deep_supervision)
        raise MedsegError(f"network.deep_supervision: network '{spec.name}' has no auxiliary outputs ({with_ds} have)")
    kwargs = {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels,
              **network_args(net_cfg)}
    if spec.fixed_size and spec.fixed_size not in kwargs:
        raise MedsegError(f"network.args.{spec.fixed_size}: network '{spec.name}' needs its input size")
    if spec.deep_supervision:
        kwargs["deep_supervision"] = ds
    return spec, kwargs


def build_network(net_cfg: dict[str, Any], in_channels: int, out_channels: int) -> torch.nn.Module:
    """Build the network named by ``net_cfg['name']``, wrapped so that any input size works.

    Args:
        net_cfg: the config's ``network`` section (``args`` must hold a fixed-size network's input size;
            the config schema fills it from the training patch when the config is loaded).
        in_channels: image channels.
        out_channels: number of label values (background included).

    Example:
        >>> net = build_network({"name": "unet", "spatial_dims": 2, "args": {"channels": [8, 16, 32]}}, 1, 3)
    """
    net_cfg = _section(net_cfg)
    if _legacy(net_cfg):  # configs and bundles written before the registry: the plain MONAI UNet
        return monai_nets.UNet(
            spatial_dims=net_cfg["spatial_dims"], in_channels=in_channels, out_channels=out_channels,
            channels=tuple(net_cfg["channels"]), strides=tuple(net_cfg["strides"]),
            num_res_units=net_cfg["num_res_units"], norm=net_cfg["norm"], dropout=net_cfg["dropout"],
        )
    spec, kwargs = _constructor(net_cfg, in_channels, out_channels)
    try:
        net = spec.cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as err:
        shown = {k: v for k, v in kwargs.items() if k not in ("in_channels", "out_channels")}
        raise MedsegError(f"network '{spec.name}': cannot be built with {shown} ({err})") from err
    size = kwargs.get(spec.fixed_size) if spec.fixed_size else None
    return PadToMultiple(net, spec.multiple(kwargs), size, spec.minimum(kwargs))


def build_on_meta(net_cfg: dict[str, Any], in_channels: int, out_channels: int) -> torch.nn.Module:
    """:func:`build_network` on the ``meta`` device (shapes only: no weights in memory, no arithmetic)."""
    try:
        with torch.device("meta"):
            return build_network(net_cfg, in_channels, out_channels)
    except RuntimeError:  # a constructor that reads tensor values (SwinUNETR's drop-path schedule): build, then move
        return build_network(net_cfg, in_channels, out_channels).to("meta")


def monai_network_def(net_cfg: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    """The same network as a MONAI Bundle config entry (``_target_`` + arguments); state dicts match."""
    net_cfg = _section(net_cfg)
    if _legacy(net_cfg):
        return {"_target_": "monai.networks.nets.UNet", "spatial_dims": net_cfg["spatial_dims"],
                "in_channels": in_channels, "out_channels": out_channels, "channels": list(net_cfg["channels"]),
                "strides": list(net_cfg["strides"]), "num_res_units": net_cfg["num_res_units"],
                "norm": net_cfg["norm"], "dropout": net_cfg["dropout"]}
    spec, kwargs = _constructor(net_cfg, in_channels, out_channels)
    size = kwargs.get(spec.fixed_size) if spec.fixed_size else None
    return {"_target_": f"scripts.{SCRIPT_PACKAGE}.PadToMultiple",
            "net": {"_target_": spec.target, **_jsonable(kwargs)},
            "multiple": spec.multiple(kwargs), "size": list(size) if size is not None else None,
            "minimum": spec.minimum(kwargs)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def describe(net_cfg: dict[str, Any]) -> str:
    """One line for reports: the network, its paper and its arguments."""
    net_cfg = _section(net_cfg)
    if _legacy(net_cfg):
        return (f"MONAI UNet ({net_cfg['spatial_dims']}D), channels {net_cfg['channels']}, strides {net_cfg['strides']},"
                f" {net_cfg['num_res_units']} residual units, {net_cfg['norm']} norm")
    spec = _spec(net_cfg)
    args = ", ".join(f"{k}={v}" for k, v in network_args(net_cfg).items() if k != spec.fixed_size)
    ds = ", deep supervision" if net_cfg.get("deep_supervision") else ""
    return f"`{spec.name}` ({net_cfg['spatial_dims']}D; {spec.paper}): {args}{ds}"


def check_network(cfg: Any, source: str = "") -> None:
    """Check what only the network knows about a validated config's ``network`` section (the schema checked
    names, types, dimensions and slice mode); called through :func:`medseg.engine.checks.check_task`.

    Refuses arguments the network does not take, values it cannot be built with, deep supervision on a
    network without auxiliary outputs, supervision weights of the wrong length, training patches that are
    not a multiple of what the network needs, and a fixed input size other than the patch. Changes nothing.
    """
    where = f"{source}: " if source else ""
    net, patch = cfg.network, cfg.training.patch_size
    spec = _spec(net)
    try:
        build_on_meta(net, 1, 2)  # checks every argument without allocating weights
    except MedsegError as err:
        raise MedsegError(f"{where}{err}") from err
    multiple = input_multiple(net)
    if any(p % multiple for p in patch):
        raise MedsegError(
            f"{where}key 'training.patch_size' {patch} must be multiples of {multiple}"
            f" (what network '{spec.name}' with these settings needs)"
        )
    size = network_args(net).get(spec.fixed_size) if spec.fixed_size else None
    if size is not None and list(size) != list(patch):
        raise MedsegError(f"{where}key 'network.args.{spec.fixed_size}' {size} must equal training.patch_size {patch}")
    weights = net.ds_weights
    if weights:
        if not net.deep_supervision:
            raise MedsegError(f"{where}key 'network.ds_weights' is set but network.deep_supervision is false")
        n = n_outputs(net)
        numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
        if len(weights) != n or not numbers or any(w < 0 for w in weights) or not weights[0] > 0:
            raise MedsegError(
                f"{where}key 'network.ds_weights' needs {n} non-negative weights (main output first, positive)"
                f" for network '{spec.name}', got {weights}"
            )


def wrap_deep_supervision(loss_fn: torch.nn.Module, net_cfg: dict[str, Any]) -> torch.nn.Module:
    """The training loss over ``[main, aux...]`` outputs: MONAI's ``DeepSupervisionLoss`` with the YAML's
    ``network.ds_weights`` (default: halving per output, 1, 0.5, 0.25, ...); ``loss_fn`` itself otherwise."""
    net_cfg = _section(net_cfg)
    if not net_cfg.get("deep_supervision"):
        return loss_fn
    weights = [float(w) for w in net_cfg.get("ds_weights") or []] or None
    return DeepSupervisionLoss(loss_fn, weight_mode="exp", weights=weights)


__all__ = ["REGISTRY", "build_network", "check_network", "describe", "input_multiple", "monai_network_def",
           "n_outputs", "network_args", "wrap_deep_supervision"]
