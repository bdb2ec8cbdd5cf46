"""The 2015 U-Net (:class:`OriginalUNet`) and its encoder-decoder set-up (:class:`EncoderDecoder`).

MONAI's ``UNet`` is a residual variant and ``BasicUNet`` has no transposed-convolution-only path with
configurable depth, hence this one. Imports only torch and MONAI: exported bundles ship it in
``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Callable, Sequence
from typing import List, Union

import torch
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from .blocks import DoubleConv

__all__ = ["EncoderDecoder", "OriginalUNet"]


class EncoderDecoder(nn.Module):
    """The U-Net layout: encoders with 2x max pooling between them, then per level a 2x transposed
    convolution up, the skip concatenated, a decoder block, and a 1x1 head.

    Subclasses choose the blocks: ``encoder(level, cin, cout)`` for each level top to bottom and
    ``decoder(level, cin, cout)`` for each decoder level bottom to top (``cin`` = skip + upsampled features).

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: image channels / classes.
        channels: features per level, top to bottom (at least two levels).
        encoder / decoder: block factories as above.
        pooling: max pooling between the encoders; False where the encoders downsample themselves (strides).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 encoder: Callable[[int, int, int], nn.Module], decoder: Callable[[int, int, int], nn.Module],
                 pooling: bool = True) -> None:
        super().__init__()
        ch = list(channels)
        if len(ch) < 2:
            raise ValueError("channels needs at least two levels")
        self.encoders = nn.ModuleList([encoder(i, in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(len(ch))])
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2) if pooling else nn.Identity()
        self.ups = nn.ModuleList(
            [Conv[Conv.CONVTRANS, spatial_dims](ch[i + 1], ch[i], kernel_size=2, stride=2) for i in reversed(range(len(ch) - 1))])
        self.decoders = nn.ModuleList([decoder(i, 2 * ch[i], ch[i]) for i in reversed(range(len(ch) - 1))])
        self.head = Conv[Conv.CONV, spatial_dims](ch[0], out_channels, kernel_size=1)
        self.output = nn.Identity()  # what follows the head (LightUNet: upsampling to the input's size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        n = len(self.encoders)
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < n - 1:
                skips.append(x)
                x = self.pool(x)
        for i, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            x = dec(torch.cat([skips[n - 2 - i], up(x)], dim=1))
        return self.output(self.head(x))


class OriginalUNet(EncoderDecoder):
    """U-Net: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015.

    Per level two 3x3 convolutions with ReLU (batch norm optional), 2x2 max pooling down, 2x2 transposed
    convolution up, skips concatenated. Convolutions are zero-padded ("same"), so the output has the
    input's size when that is a multiple of ``2 ** (len(channels) - 1)``. With the default channels
    64..1024 the 2D network has 31.0 M parameters, as in the paper.

    Args:
        spatial_dims: 2 or 3.
        in_channels / out_channels: image channels / classes.
        channels: features per level, top to bottom.
        norm: ``None`` (the original), ``"batch"`` or ``"instance"`` (any MONAI ``Norm`` name or (name, args)).
        act: activation (MONAI ``Act`` name or (name, args)); ReLU as in the paper.
        dropout: dropout between the two convolutions of the bottom level (the paper drops at the bottom).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (64, 128, 256, 512, 1024), norm: Union[str, tuple, None] = None,
                 act: Union[str, tuple] = "relu", dropout: float = 0.0) -> None:
        bottom = len(channels) - 1
        super().__init__(
            spatial_dims, in_channels, out_channels, channels,
            encoder=lambda i, cin, cout: DoubleConv(spatial_dims, cin, cout, norm, act, dropout if i == bottom else 0.0),
            decoder=lambda i, cin, cout: DoubleConv(spatial_dims, cin, cout, norm, act))
