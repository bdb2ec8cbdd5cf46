"""medseg's own networks, written where MONAI has none, in MONAI's style (``spatial_dims``, layer factories).

This module imports only torch and MONAI: the bundle exporter copies it into a bundle's ``scripts/``
folder, so an exported model builds on stock MONAI without medseg installed.

- :class:`OriginalUNet`: the 2015 U-Net (MONAI's ``UNet`` is a residual variant, ``BasicUNet`` has no
  transposed-convolution-only path with configurable depth).
- :class:`UNet3Plus`: full-scale skips and deep supervision (MONAI has none).
- :class:`LightUNet`: depthwise-separable convolutions (MONAI has none).
- :class:`UNetPlusPlus`: MONAI's ``BasicUNetPlusPlus`` with a forward that returns ``[main, aux...]`` only
  in training and prunes to a chosen depth at inference (MONAI's always computes every node).
- :class:`PadToMultiple`: pads any input to the size a network needs and crops the output back.
"""


from collections.abc import Sequence
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Act, Conv, Norm, Pool
from monai.networks.nets import BasicUNetPlusPlus
from torch import nn

__all__ = ["OriginalUNet", "UNet3Plus", "LightUNet", "UNetPlusPlus", "PadToMultiple"]


def _conv_norm_act(spatial_dims: int, cin: int, cout: int, norm: Union[str, tuple, None], act: Union[str, tuple],
                   kernel_size: int = 3, groups: int = 1) -> List[nn.Module]:
    """Convolution (bias only without norm), optional normalisation, activation: MONAI factories."""
    layers: List[nn.Module] = [Conv[Conv.CONV, spatial_dims](cin, cout, kernel_size=kernel_size,
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
        layers = _conv_norm_act(spatial_dims, cin, cout, norm, act)
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers, *_conv_norm_act(spatial_dims, cout, cout, norm, act))


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 convolution then pointwise 1x1 convolution, each with (optional) norm and activation."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm: Union[str, tuple, None],
                 act: Union[str, tuple]) -> None:
        super().__init__(*_conv_norm_act(spatial_dims, cin, cin, norm, act, kernel_size=3, groups=cin),
                         *_conv_norm_act(spatial_dims, cin, cout, norm, act, kernel_size=1))


class _EncoderDecoder(nn.Module):
    """The U-Net pass shared by :class:`OriginalUNet` and :class:`LightUNet`: encoders with max pooling
    between them, then transposed-convolution up, concatenated skip, decoder, and a 1x1 head."""

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
        return self.head(x)


class OriginalUNet(_EncoderDecoder):
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
        super().__init__()
        ch = list(channels)
        if len(ch) < 2:
            raise ValueError("channels needs at least two levels")
        self.encoders = nn.ModuleList(
            [DoubleConv(spatial_dims, in_channels if i == 0 else ch[i - 1], ch[i], norm, act,
                        dropout if i == len(ch) - 1 else 0.0) for i in range(len(ch))])
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.ups = nn.ModuleList(
            [Conv[Conv.CONVTRANS, spatial_dims](ch[i + 1], ch[i], kernel_size=2, stride=2) for i in reversed(range(len(ch) - 1))])
        self.decoders = nn.ModuleList(
            [DoubleConv(spatial_dims, 2 * ch[i], ch[i], norm, act) for i in reversed(range(len(ch) - 1))])
        self.head = Conv[Conv.CONV, spatial_dims](ch[0], out_channels, kernel_size=1)



class LightUNet(_EncoderDecoder):
    """Lightweight U-Net with depthwise-separable convolutions, after Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861, 2017.

    The U-Net layout (max pooling, transposed-convolution up, concatenated skips) with every 3x3
    convolution but the first replaced by a depthwise 3x3 + pointwise 1x1 pair: roughly 8x fewer
    parameters and multiply-accumulates than :class:`OriginalUNet` at the same widths.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), norm: Union[str, tuple, None] = "batch",
                 act: Union[str, tuple] = "relu") -> None:
        super().__init__()
        ch = list(channels)
        if len(ch) < 2:
            raise ValueError("channels needs at least two levels")
        first = nn.Sequential(*_conv_norm_act(spatial_dims, in_channels, ch[0], norm, act),
                              SeparableConv(spatial_dims, ch[0], ch[0], norm, act))
        self.encoders = nn.ModuleList(
            [first] + [nn.Sequential(SeparableConv(spatial_dims, ch[i - 1], ch[i], norm, act),
                                     SeparableConv(spatial_dims, ch[i], ch[i], norm, act)) for i in range(1, len(ch))])
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.ups = nn.ModuleList(
            [Conv[Conv.CONVTRANS, spatial_dims](ch[i + 1], ch[i], kernel_size=2, stride=2) for i in reversed(range(len(ch) - 1))])
        self.decoders = nn.ModuleList(
            [nn.Sequential(SeparableConv(spatial_dims, 2 * ch[i], ch[i], norm, act),
                           SeparableConv(spatial_dims, ch[i], ch[i], norm, act)) for i in reversed(range(len(ch) - 1))])
        self.head = Conv[Conv.CONV, spatial_dims](ch[0], out_channels, kernel_size=1)



class _FullScaleBranch(nn.Module):
    """One input of a UNet 3+ decoder node: resample a feature map to the node's scale, then 3x3 conv."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, scale: int, norm: Union[str, tuple, None],
                 act: Union[str, tuple]) -> None:
        super().__init__()
        if scale < 1:  # a shallower (finer) encoder map: max-pool down by 1/scale
            self.resample: nn.Module = Pool[Pool.MAX, spatial_dims](kernel_size=-scale, stride=-scale)
        elif scale > 1:  # a deeper (coarser) map: upsample
            self.resample = UpSample(spatial_dims, scale_factor=scale, mode="nontrainable", interp_mode="linear",
                                     align_corners=False)
        else:
            self.resample = nn.Identity()
        self.conv = nn.Sequential(*_conv_norm_act(spatial_dims, cin, cout, norm, act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.resample(x))


class _FullScaleNode(nn.Module):
    """A UNet 3+ decoder node: full-scale branches concatenated, fused by a 3x3 convolution."""

    def __init__(self, branches: List[nn.Module], fused: int, spatial_dims: int, norm: Union[str, tuple, None],
                 act: Union[str, tuple]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fuse = nn.Sequential(*_conv_norm_act(spatial_dims, fused, fused, norm, act))

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        parts: List[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            parts.append(branch(feats[i]))
        return self.fuse(torch.cat(parts, dim=1))


class UNet3Plus(nn.Module):
    """UNet 3+: Huang et al., "UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation", ICASSP 2020.

    Encoder of two-convolution levels with max pooling. Every decoder node takes all encoder maps at or
    above its scale (max-pooled down) and all deeper decoder maps (bilinear/trilinear upsampled), each
    through a 3x3 convolution to ``cat_channels``, concatenated and fused by a 3x3 convolution.
    With ``deep_supervision`` every deeper decoder node and the bottom encoder get a 3x3 classification
    head at their own resolution; in training the forward returns ``[main, aux1, ...]`` (aux ordered
    from fine to coarse), in evaluation only the main output.

    Args:
        spatial_dims: 2 or 3.
        channels: encoder features per level (the paper: 64..1024).
        cat_channels: features per full-scale branch (default ``channels[0]``).
        norm / act: MONAI ``Norm`` / ``Act`` names; batch norm and ReLU as in the paper.
        deep_supervision: add the auxiliary heads.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (64, 128, 256, 512, 1024), cat_channels: Optional[int] = None,
                 norm: Union[str, tuple, None] = "batch", act: Union[str, tuple] = "relu",
                 deep_supervision: bool = False) -> None:
        super().__init__()
        ch = list(channels)
        n = len(ch)
        if n < 2:
            raise ValueError("channels needs at least two levels")
        cat = int(cat_channels or ch[0])
        fused = cat * n
        self.deep_supervision = deep_supervision
        self.encoders = nn.ModuleList(
            [DoubleConv(spatial_dims, in_channels if i == 0 else ch[i - 1], ch[i], norm, act) for i in range(n)])
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        nodes = []
        for d in reversed(range(n - 1)):  # decoder node at level d, deepest first
            branches: List[nn.Module] = []
            for e in range(d + 1):  # encoder maps at or above: pool by 2**(d-e)
                branches.append(_FullScaleBranch(spatial_dims, ch[e], cat, -(2 ** (d - e)) if e < d else 1, norm, act))
            for k in range(d + 1, n):  # deeper decoder maps (the bottom encoder for k = n-1): upsample
                branches.append(_FullScaleBranch(spatial_dims, ch[k] if k == n - 1 else fused, cat, 2 ** (k - d),
                                                 norm, act))
            nodes.append(_FullScaleNode(branches, fused, spatial_dims, norm, act))
        self.nodes = nn.ModuleList(nodes)
        self.head = Conv[Conv.CONV, spatial_dims](fused, out_channels, kernel_size=3, padding=1)
        # auxiliary heads, fine to coarse: decoder levels 1..n-2, then the bottom encoder
        self.aux_heads = nn.ModuleList(
            [Conv[Conv.CONV, spatial_dims](fused if lvl < n - 1 else ch[-1], out_channels, kernel_size=3, padding=1)
             for lvl in range(1, n)] if deep_supervision else [])

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        enc: List[torch.Tensor] = []
        for i, block in enumerate(self.encoders):
            x = block(x if i == 0 else self.pool(x))
            enc.append(x)
        n = len(enc)
        dec: List[torch.Tensor] = [enc[n - 1]]  # deepest first: bottom encoder, then decoder n-2 .. 0
        for j, node in enumerate(self.nodes):
            d = n - 2 - j
            deeper: List[torch.Tensor] = []
            for k in range(len(dec)):  # decoder maps of levels d+1 .. n-1, shallow to deep
                deeper.append(dec[len(dec) - 1 - k])
            dec.append(node(enc[: d + 1] + deeper))
        main = self.head(dec[n - 1])
        if self.training and self.deep_supervision:
            outs: List[torch.Tensor] = [main]
            for lvl, head in enumerate(self.aux_heads):  # level lvl + 1: dec index n - 2 - lvl
                outs.append(head(dec[n - 2 - lvl]))
            return outs
        return main


class UNetPlusPlus(BasicUNetPlusPlus):
    """UNet++: Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", DLMIA 2018.

    MONAI's ``BasicUNetPlusPlus`` (nested dense skips; its layers and weights unchanged) with a forward
    that follows medseg's deep supervision contract and prunes at inference:

    - training with ``deep_supervision``: ``[x_0_4, x_0_3, x_0_2, x_0_1]`` outputs (main first);
    - evaluation: the output of column ``prune_depth`` (1..4), computing only the nodes it needs
      (``prune_depth=1`` runs the two top levels only).

    Args:
        channels: the five encoder widths; the last decoder node has ``channels[0]`` features.
        prune_depth: depth used at inference (4 = the full network).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 channels: Sequence[int] = (32, 32, 64, 128, 256), deep_supervision: bool = False,
                 prune_depth: int = 4, norm: Union[str, tuple] = ("instance", {"affine": True}),
                 act: Union[str, tuple] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
                 dropout: float = 0.0, upsample: str = "deconv") -> None:
        ch = list(channels)
        if len(ch) != 5:
            raise ValueError(f"channels needs 5 values (the UNet++ encoder has 5 levels), got {len(ch)}")
        if not 1 <= int(prune_depth) <= 4:
            raise ValueError(f"prune_depth must be 1..4, got {prune_depth}")
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                         features=tuple(ch + [ch[0]]), deep_supervision=deep_supervision, act=act, norm=norm,
                         dropout=dropout, upsample=upsample)
        self.prune_depth = int(prune_depth)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:  # type: ignore[override]
        depth = 4 if self.training else self.prune_depth
        x_0_0 = self.conv_0_0(x)
        x_1_0 = self.conv_1_0(x_0_0)
        x_0_1 = self.upcat_0_1(x_1_0, x_0_0)
        if depth == 1:
            return self.final_conv_0_1(x_0_1)
        x_2_0 = self.conv_2_0(x_1_0)
        x_1_1 = self.upcat_1_1(x_2_0, x_1_0)
        x_0_2 = self.upcat_0_2(x_1_1, torch.cat([x_0_0, x_0_1], dim=1))
        if depth == 2:
            return self.final_conv_0_2(x_0_2)
        x_3_0 = self.conv_3_0(x_2_0)
        x_2_1 = self.upcat_2_1(x_3_0, x_2_0)
        x_1_2 = self.upcat_1_2(x_2_1, torch.cat([x_1_0, x_1_1], dim=1))
        x_0_3 = self.upcat_0_3(x_1_2, torch.cat([x_0_0, x_0_1, x_0_2], dim=1))
        if depth == 3:
            return self.final_conv_0_3(x_0_3)
        x_4_0 = self.conv_4_0(x_3_0)
        x_3_1 = self.upcat_3_1(x_4_0, x_3_0)
        x_2_2 = self.upcat_2_2(x_3_1, torch.cat([x_2_0, x_2_1], dim=1))
        x_1_3 = self.upcat_1_3(x_2_2, torch.cat([x_1_0, x_1_1, x_1_2], dim=1))
        x_0_4 = self.upcat_0_4(x_1_3, torch.cat([x_0_0, x_0_1, x_0_2, x_0_3], dim=1))
        main = self.final_conv_0_4(x_0_4)
        if self.training and self.deep_supervision:
            return [main, self.final_conv_0_3(x_0_3), self.final_conv_0_2(x_0_2), self.final_conv_0_1(x_0_1)]
        return main


class PadToMultiple(nn.Module):
    """Run ``net`` on inputs of any size: zero-pad each spatial axis up to a multiple of ``multiple`` (or up to
    ``size``, for networks with a fixed input size), then crop every output back to the input's extent
    (lower-resolution auxiliary outputs are cropped in proportion).

    Args:
        net: the network.
        multiple: the factor every spatial size must be divisible by (1 = any size).
        size: a fixed input size (e.g. UNETR's ``img_size``); larger inputs are refused.
        minimum: the smallest size per axis (SwinUNETR: two windows at the bottom, or its norm has one value).
    """

    size: List[int]

    def __init__(self, net: nn.Module, multiple: int = 1, size: Optional[Sequence[int]] = None,
                 minimum: int = 0) -> None:
        super().__init__()
        self.net = net
        self.multiple = int(multiple)
        self.minimum = int(minimum)
        self.size: List[int] = [int(s) for s in size] if size is not None else []

    def _target(self, shape: List[int]) -> List[int]:
        if len(self.size) > 0:
            for s, t in zip(shape, self.size):
                if s > t:
                    raise ValueError(f"input size {shape} exceeds the network's fixed input size {self.size}")
            return self.size
        m = self.multiple
        return [max((s + m - 1) // m * m, self.minimum) for s in shape]

    def _crop(self, y: torch.Tensor, shape: List[int], padded: List[int]) -> torch.Tensor:
        for axis in range(len(shape)):
            ratio = padded[axis] // y.shape[axis + 2]  # 1 for full-resolution outputs
            keep = (shape[axis] + ratio - 1) // ratio
            y = y.narrow(axis + 2, 0, keep)
        return y

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        shape: List[int] = [int(s) for s in x.shape[2:]]
        target = self._target(shape)
        pad: List[int] = []
        for axis in range(len(shape) - 1, -1, -1):  # F.pad wants the last axis first
            pad += [0, target[axis] - shape[axis]]
        changed = target != shape
        y = self.net(F.pad(x, pad) if changed else x)
        if isinstance(y, torch.Tensor):
            return self._crop(y, shape, target) if changed else y
        out: List[torch.Tensor] = []
        for t in y:
            out.append(self._crop(t, shape, target) if changed else t)
        return out
