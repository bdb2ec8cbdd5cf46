"""UNet++ on MONAI's ``BasicUNetPlusPlus``, with medseg's deep supervision contract and pruning at inference.

MONAI's forward always computes every node and returns every output; this one returns ``[main, aux...]``
only in training and prunes to a chosen depth at inference. Imports only torch and MONAI: exported bundles
ship it in ``scripts/medseg_networks/``. No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Sequence
from typing import List, Union

import torch
from monai.networks.nets import BasicUNetPlusPlus

__all__ = ["UNetPlusPlus"]


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
