"""A lightweight U-Net: depthwise-separable convolutions (MONAI has none) in the U-Net layout.

Imports only torch and MONAI: exported bundles ship it in ``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Sequence
from typing import Union

from torch import nn

from .blocks import SeparableConv, conv_norm_act
from .unet import EncoderDecoder

__all__ = ["LightUNet"]


class LightUNet(EncoderDecoder):
    """Lightweight U-Net with depthwise-separable convolutions, after Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861, 2017.

    The U-Net layout (max pooling, transposed-convolution up, concatenated skips) with every 3x3
    convolution but the first replaced by a depthwise 3x3 + pointwise 1x1 pair: roughly 8x fewer
    parameters and multiply-accumulates than :class:`OriginalUNet` at the same widths.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), norm: Union[str, tuple, None] = "batch",
                 act: Union[str, tuple] = "relu") -> None:
        def encoder(level: int, cin: int, cout: int) -> nn.Module:
            if level == 0:  # a full 3x3 convolution on the image first (a depthwise one would see one channel)
                return nn.Sequential(*conv_norm_act(spatial_dims, cin, cout, norm, act),
                                     SeparableConv(spatial_dims, cout, cout, norm, act))
            return nn.Sequential(SeparableConv(spatial_dims, cin, cout, norm, act),
                                 SeparableConv(spatial_dims, cout, cout, norm, act))

        def decoder(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(SeparableConv(spatial_dims, cin, cout, norm, act),
                                 SeparableConv(spatial_dims, cout, cout, norm, act))

        super().__init__(spatial_dims, in_channels, out_channels, channels, encoder, decoder)
