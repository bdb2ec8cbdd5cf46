"""Network registry: a config's ``network`` section to a ``torch.nn.Module``."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet

from medseg.errors import MedsegError


def build_network(net_cfg: dict[str, Any], in_channels: int, out_channels: int) -> torch.nn.Module:
    """Build the network named by ``net_cfg['name']`` (MONAI's classes, configured from the YAML).

    Args:
        net_cfg: the config's ``network`` section.
        in_channels: image channels.
        out_channels: number of label values (background included).

    Example:
        >>> net = build_network({"name": "unet", "spatial_dims": 3, "channels": [8, 16], "strides": [2],
        ...                      "num_res_units": 1, "dropout": 0.0, "norm": "instance"}, 1, 3)
    """
    name = net_cfg["name"]
    if name == "unet":
        return UNet(
            spatial_dims=net_cfg["spatial_dims"],
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(net_cfg["channels"]),
            strides=tuple(net_cfg["strides"]),
            num_res_units=net_cfg["num_res_units"],
            norm=net_cfg["norm"],
            dropout=net_cfg["dropout"],
        )
    raise MedsegError(f"network.name '{name}' is not known; available: unet")


def monai_network_def(net_cfg: dict[str, Any], in_channels: int, out_channels: int) -> dict[str, Any]:
    """The same network as a MONAI Bundle config entry (``_target_`` + arguments)."""
    if net_cfg["name"] != "unet":
        raise MedsegError(f"network.name '{net_cfg['name']}' cannot be exported yet")
    return {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": net_cfg["spatial_dims"],
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": list(net_cfg["channels"]),
        "strides": list(net_cfg["strides"]),
        "num_res_units": net_cfg["num_res_units"],
        "norm": net_cfg["norm"],
        "dropout": net_cfg["dropout"],
    }
