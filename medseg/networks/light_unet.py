"""A light U-Net for CPU inference: plain convolutions, every level at half resolution or below.

Imports only torch and MONAI: exported bundles ship it in ``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Sequence
from typing import List, Union

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from .blocks import conv_norm_act

__all__ = ["LightUNet"]


class LightUNet(nn.Module):
    """U-Net layout (Ronneberger et al., MICCAI 2015) sized for CPU inference: a strided 3x3 convolution at every
    level (the first one halves the image, as MONAI's UNet after Kerfoot et al., STACOM 2018), one more 3x3
    convolution per level below the top, 2x transposed convolutions up with concatenated skips, a 1x1 head at half
    resolution and linear upsampling of the logits to the input's size.

    The first design (depthwise-separable convolutions, after MobileNets) had fewer multiply-accumulates than
    MONAI's UNet but ran 4-9x slower than it (PyTorch's depthwise 3D CPU kernels and the channel-layout copies around
    them, and a full-resolution level; measured with 2 threads on 64x96x96 patches): hence dense convolutions and no
    full-resolution level. With the default channels the 3D network has 0.35 M parameters and 0.74 G
    multiply-accumulates per 64x96x96 patch (MONAI's UNet 16..256 with 2 residual units: 4.8 M and 3.6 G).

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: image channels / classes.
        channels: features per level, top (half resolution) to bottom; inputs must be multiples of
            ``2 ** len(channels)`` (the registry pads them).
        norm: MONAI ``Norm`` name or (name, args), or ``None``.
        act: MONAI ``Act`` name or (name, args).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (8, 16, 32, 64), norm: Union[str, tuple, None] = "batch",
                 act: Union[str, tuple] = "relu") -> None:
        super().__init__()
        ch = list(channels)
        if len(ch) < 2:
            raise ValueError("channels needs at least two levels")

        def level(i: int, cin: int, cout: int, stride: int) -> nn.Sequential:
            layers = conv_norm_act(spatial_dims, cin, cout, norm, act, stride=stride)
            if i > 0:  # the top level runs at half resolution, where one convolution costs as much as all below
                layers += conv_norm_act(spatial_dims, cout, cout, norm, act)
            return nn.Sequential(*layers)

        self.encoders = nn.ModuleList([level(i, in_channels if i == 0 else ch[i - 1], ch[i], 2) for i in range(len(ch))])
        self.ups = nn.ModuleList(
            [Conv[Conv.CONVTRANS, spatial_dims](ch[i + 1], ch[i], kernel_size=2, stride=2) for i in reversed(range(len(ch) - 1))])
        self.decoders = nn.ModuleList([level(i, 2 * ch[i], ch[i], 1) for i in reversed(range(len(ch) - 1))])
        self.head = Conv[Conv.CONV, spatial_dims](ch[0], out_channels, kernel_size=1)
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear" if spatial_dims == 3 else "bilinear",
                                    align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        n = len(self.encoders)
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < n - 1:
                skips.append(x)
        for i, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            x = dec(torch.cat([skips[n - 2 - i], up(x)], dim=1))
        return self.upsample(self.head(x))
