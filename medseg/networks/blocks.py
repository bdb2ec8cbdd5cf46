"""Convolution blocks shared by medseg's own networks, from MONAI's layer factories (2D and 3D).

Imports only torch and MONAI: exported bundles ship it in ``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from typing import List, Union

from monai.networks.layers.factories import Act, Conv, Norm
from torch import nn

__all__ = ["conv_norm_act", "DoubleConv"]


def conv_norm_act(spatial_dims: int, cin: int, cout: int, norm: Union[str, tuple, None], act: Union[str, tuple],
                   kernel_size: int = 3, groups: int = 1, stride: int = 1) -> List[nn.Module]:
    """Convolution (bias only without norm), optional normalisation, activation: MONAI factories."""
    layers: List[nn.Module] = [Conv[Conv.CONV, spatial_dims](cin, cout, kernel_size=kernel_size, stride=stride,
                                                          padding=kernel_size // 2, groups=groups, bias=norm is None)]
    if norm is not None:
        norm_name, norm_args = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]))
        layers.append(Norm[norm_name, spatial_dims](cout, **norm_args))
    act_name, act_args = (act, {}) if isinstance(act, str) else (act[0], dict(act[1]))
    layers.append(Act[act_name](**act_args))
    return layers


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional) normalisation and the activation."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm: Union[str, tuple, None], act: Union[str, tuple],
                 dropout: float = 0.0) -> None:
        layers = conv_norm_act(spatial_dims, cin, cout, norm, act)
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers, *conv_norm_act(spatial_dims, cout, cout, norm, act))

