"""The one prediction chain (also the bundle's ``inference.json``), the engines it runs, one case through it.

- :mod:`.chain`: the chain as one bundle-style spec, instantiated through MONAI's ``ConfigParser``.
- :mod:`.postprocess`: MONAI-compatible post-processing transforms (fused inverse + argmax, largest component).
- :mod:`.engines`: the ``forward`` callable the sliding window runs (torch).
- :mod:`.predict`: one case through the chain, with optional mirrored test-time augmentation.
"""

from __future__ import annotations

from medseg.inference.chain import InferenceChain, build_chain, chain_from_config, inference_spec, largest_component_labels
from medseg.inference.engines import Forward, torch_forward
from medseg.inference.postprocess import InvertToLabelsd, KeepLargestComponentd, keep_largest_component_
from medseg.inference.predict import predict_case, run_case

__all__ = [
    "Forward", "InferenceChain", "InvertToLabelsd", "KeepLargestComponentd", "build_chain", "chain_from_config",
    "inference_spec", "keep_largest_component_", "largest_component_labels", "predict_case", "run_case",
    "torch_forward",
]
