"""UNet 3+ (MONAI has none): full-scale skip connections and deep supervision.

Imports only torch and MONAI: exported bundles ship it in ``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Sequence
from typing import List, Optional, Union

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from .blocks import DoubleConv, conv_norm_act

__all__ = ["UNet3Plus"]


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
        self.conv = nn.Sequential(*conv_norm_act(spatial_dims, cin, cout, norm, act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.resample(x))


class _FullScaleNode(nn.Module):
    """A UNet 3+ decoder node: full-scale branches concatenated, fused by a 3x3 convolution."""

    def __init__(self, branches: List[nn.Module], fused: int, spatial_dims: int, norm: Union[str, tuple, None],
                 act: Union[str, tuple]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fuse = nn.Sequential(*conv_norm_act(spatial_dims, fused, fused, norm, act))

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
