"""Any input size for any network: pad up to the size it needs, crop the outputs back.

Imports only torch: exported bundles ship it in ``scripts/medseg_networks/`` (every ``network_def`` is
wrapped in it). No ``from __future__ import annotations``: TorchScript reads the annotations.
"""

from collections.abc import Sequence
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PadToMultiple"]


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
