"""A light U-Net for CPU inference: plain convolutions, every level at half resolution or below.

Imports only torch and MONAI: exported bundles ship it in ``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Sequence
from typing import Union

from torch import nn

from .blocks import conv_norm_act
from .unet import EncoderDecoder

__all__ = ["LightUNet"]


class LightUNet(EncoderDecoder):
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
        def level(i: int, cin: int, cout: int, stride: int) -> nn.Sequential:
            layers = conv_norm_act(spatial_dims, cin, cout, norm, act, stride=stride)
            if i > 0:  # the top level runs at half resolution, where one convolution costs as much as all below
                layers += conv_norm_act(spatial_dims, cout, cout, norm, act)
            return nn.Sequential(*layers)

        super().__init__(spatial_dims, in_channels, out_channels, channels, pooling=False,
                         encoder=lambda i, cin, cout: level(i, cin, cout, 2),
                         decoder=lambda i, cin, cout: level(i, cin, cout, 1))
        self.output = nn.Upsample(scale_factor=2, mode="trilinear" if spatial_dims == 3 else "bilinear",
                                  align_corners=False)
