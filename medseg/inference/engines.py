"""What the sliding window runs: a ``forward`` callable, ``(N, C, *patch) tensor -> (N, classes, *patch) logits``.

Torch now; ONNX Runtime and OpenVINO engines will be further callables of the same shape (the runtime is a
choice at prediction time, not a different chain).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def torch_forward(network: torch.nn.Module, device: torch.device | str | None = None) -> Forward:
    """``network`` on ``device`` in eval mode, as the forward callable (the module itself: hooks keep working)."""
    if device is not None:
        network = network.to(device)
    return network.eval()
