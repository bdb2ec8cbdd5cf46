"""Mixed precision and activation checkpointing for MONAI's SupervisedTrainer (``training.amp``,
``training.activation_checkpointing``).

- ``bf16``: the forward pass under ``torch.autocast(dtype=bfloat16)`` on the CPU or the GPU, no gradient
  scaler (bf16 has float32's exponent range);
- ``fp16``: GPU only, MONAI's own ``amp=True`` (CUDA autocast + ``GradScaler``), half precision;
- ``none``: float32.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from monai.inferers import SimpleInferer
from monai.networks.blocks import Convolution, ResidualUnit
from torch.utils.checkpoint import checkpoint

from medseg.errors import MedsegError


class AutocastInferer(SimpleInferer):
    """The forward pass under ``torch.autocast`` (bf16 on CPU or GPU), returned in float32 so the loss and its
    reductions run in full precision. MONAI's ``amp=True`` autocasts on CUDA only and always adds an fp16
    gradient scaler; bf16 needs no scaler."""

    def __init__(self, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.device_type, self.dtype = device_type, dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = super().__call__(inputs, network, *args, **kwargs)
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()


def precision_arguments(amp: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """(train inferer, SupervisedTrainer amp arguments) for ``training.amp``."""
    if amp == "bf16":
        return AutocastInferer(device.type, torch.bfloat16), {}
    if amp == "fp16":
        if device.type != "cuda":
            raise MedsegError("training.amp: fp16 needs a GPU (the CPU has no fp16 autocast); use bf16 on CPU")
        return SimpleInferer(), {"amp": True, "amp_kwargs": {"dtype": torch.float16}}
    return SimpleInferer(), {}


def enable_activation_checkpointing(net: torch.nn.Module) -> None:
    """Recompute activations in the backward pass instead of keeping them (less memory, about a third more time).

    Networks with a ``use_checkpoint`` switch (MONAI's SwinUNETR) get it turned on; in MONAI's UNet each
    residual/convolution block of the encoder and decoder is run through ``torch.utils.checkpoint`` (MONAI's
    UNet has no switch of its own). The state dict keeps its keys. With batch norm, a checkpointed block's
    running statistics are updated twice per step (forward and recomputation).
    """
    switches = [m for m in net.modules() if hasattr(m, "use_checkpoint")]
    if switches:
        for m in switches:
            m.use_checkpoint = True
        return
    blocks = [m for m in net.modules() if isinstance(m, (ResidualUnit, Convolution))]
    outer = [m for m in blocks if not any(m is not b and any(c is m for c in b.modules()) for b in blocks)]
    if not outer:
        raise MedsegError(
            f"training.activation_checkpointing: network '{type(net).__name__}' does not support it; set it to false"
        )

    def run(module: torch.nn.Module, forward: Any, x: torch.Tensor) -> torch.Tensor:
        if module.training and torch.is_grad_enabled():
            return checkpoint(forward, x, use_reentrant=False)
        return forward(x)

    for block in outer:
        block.forward = partial(run, block, block.forward)


def disable_activation_checkpointing(net: torch.nn.Module) -> None:
    """Undo :func:`enable_activation_checkpointing` (before TorchScript export)."""
    for m in net.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = False
        m.__dict__.pop("forward", None)
