"""The one prediction chain: preprocessing, inferer and post-processing written once as a bundle-style spec.

:func:`inference_spec` is what the exported bundle's ``configs/inference.json`` holds (with medseg's own classes
pointing at their copies in the bundle's ``scripts/``, and ``SaveImaged`` appended) and what ``medseg.predict``
instantiates in-process through MONAI's ``ConfigParser`` (:func:`build_chain`), so both run the same
transforms on the same arguments. A foreign bundle's ``inference.json`` runs through the same
:func:`chain_from_config`.

Chain for a CT task (``preprocessing`` from :func:`medseg.transforms.preprocess_spec`)::

    LoadImaged(reader=[DicomSeriesReader, IsalNiftiReader]) -> EnsureChannelFirstd -> Orientationd
    -> ScaleSpacingd -> OnePassScaleIntensityRanged -> CropForegroundd -> [DivisiblePadd] -> EnsureTyped
    inferer: SlidingWindowInferer (or SliceInferer)
    postprocessing: Activationsd(softmax) -> InvertToLabelsd -> [KeepLargestComponentd per label set]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from monai.bundle import ConfigParser
import numpy as np
import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from monai.transforms import Compose, SaveImage, SaveImaged

from medseg.data import dicom_reader, nifti, pictures, tiff_units
from medseg.data.nifti import IsalNiftiReader
from medseg.inference import postprocess
from medseg.inference.postprocess import InvertToLabelsd, KeepLargestComponentd
from medseg.networks.bundle import inferer_def
from medseg.transforms import input_channels, preprocess_spec
from medseg.transforms.pipeline import OWN_TRANSFORMS, script_target

#: the package of a bundle's ``scripts/`` folder holding what the chain adds to the transforms, and its modules
#: (each imports only torch, numpy, scipy, nibabel, MONAI and optionally isal/cc3d)
SCRIPT_PACKAGE = "medseg_inference"
SCRIPT_MODULES = (nifti, postprocess, pictures, tiff_units)  # pictures: PNG/TIFF/JPEG in and out
SCRIPT_CLASSES = (IsalNiftiReader, InvertToLabelsd, KeepLargestComponentd, pictures.PictureReader,
                  pictures.SavePictured, postprocess.foreground_mask)

#: own post-processing transforms, by the name the spec uses
POST_TRANSFORMS = {"InvertToLabelsd": InvertToLabelsd, "KeepLargestComponentd": KeepLargestComponentd}

#: config keys whose string values name classes (a transform, LoadImaged's readers)
_CLASS_KEYS = ("_target_", "reader")


def largest_component_labels(cfg: Any) -> list[list[int]]:
    """Label sets whose union is reduced to its largest connected component after prediction."""
    classes = cfg.evaluation.classes
    return [list(classes[name]) for name in cfg.evaluation.keep_largest_component]


def postprocess_spec(cfg: Any) -> list[dict[str, Any]]:
    """Logits -> class probabilities -> uint8 labels on the input grid -> largest components."""
    post: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "InvertToLabelsd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
    ]
    for members in largest_component_labels(cfg):
        post.append({"_target_": "KeepLargestComponentd", "keys": "pred", "applied_labels": members})
    return post


def _prediction_loading(spec: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``spec`` with LoadImaged's NIfTI reader handing over the transposed view (no row-major copy; the labels
    go back to the file's axis order in ``InvertToLabelsd``) and ``CropForegroundd`` searching its box on numpy
    (:func:`postprocess.foreground_mask`): the same image, sooner."""
    out = []
    for entry in spec:
        if entry["_target_"] == "LoadImaged":
            readers = [{"_target_": r, "reverse_axes": True} if r == nifti.READER_PATH else r for r in entry["reader"]]
            entry = {**entry, "reader": readers}
        elif entry["_target_"] == "CropForegroundd" and "select_fn" not in entry:
            entry = {**entry, "select_fn": {"_target_": _dotted(postprocess.foreground_mask), "_mode_": "callable"}}
        out.append(entry)
    return out


def inference_spec(cfg: Any) -> dict[str, Any]:
    """``preprocessing``, ``inferer`` and ``postprocessing`` as bundle config entries (own classes by short name)."""
    return {
        "preprocessing": {"_target_": "Compose", "transforms": _prediction_loading(preprocess_spec(cfg, ("image",)))},
        "inferer": inferer_def(cfg),  # sliding windows, or slice by slice for a 2D network in slice mode
        "postprocessing": {"_target_": "Compose", "transforms": postprocess_spec(cfg)},
    }


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _own_classes() -> dict[str, type]:
    return {**OWN_TRANSFORMS, **POST_TRANSFORMS}


def _rename(config: Any, names: dict[str, str]) -> Any:
    """``config`` with the class names under :data:`_CLASS_KEYS` replaced as ``names`` says."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key in _CLASS_KEYS and isinstance(value, str):
                out[key] = names.get(value, value)
            elif key in _CLASS_KEYS and isinstance(value, list):
                out[key] = [names.get(v, v) if isinstance(v, str) else _rename(v, names) for v in value]
            else:
                out[key] = _rename(value, names)
        return out
    if isinstance(config, list):
        return [_rename(v, names) for v in config]
    return config


def local_targets(config: Any) -> Any:
    """``config`` with medseg's own classes named by their medseg module (for ``ConfigParser`` in-process)."""
    return _rename(config, {name: _dotted(cls) for name, cls in _own_classes().items()})


def bundle_targets(config: Any) -> Any:
    """``config`` with medseg's own classes (short names or medseg dotted paths) pointing at the bundle's
    ``scripts/`` copies."""
    names = {}
    for name, cls in OWN_TRANSFORMS.items():
        names[name] = names[_dotted(cls)] = script_target(name)
    for cls in SCRIPT_CLASSES:
        names[cls.__name__] = names[_dotted(cls)] = f"scripts.{SCRIPT_PACKAGE}.{cls.__name__}"
    names[dicom_reader.READER_PATH] = dicom_reader.BUNDLE_READER  # medseg's DICOM series reader
    return _rename(config, names)


@dataclass
class InferenceChain:
    """What turns an input file into a label map: ``postprocessing(preprocessing(item) + pred)``.

    ``pred`` is ``inferer(image[None], forward)[0]`` (logits); ``postprocessing`` starts from them (no writing
    step: medseg writes the result itself). ``in_channels``: the channels the network takes, when known.
    """

    preprocessing: Compose
    inferer: Inferer
    postprocessing: Compose
    in_channels: int | None = None


class SmallImageReflect(Inferer):
    """``inner`` (a sliding window with reflect padding) on an image first mirrored out to the window where a pad
    would be as wide as the image, then cropped back. Own wrapper: MONAI's sliding window pads with torch's
    reflect mode, which needs every pad narrower than the image (a 16x16 picture under a 128-pixel window failed
    with a padding error); numpy's reflect mirrors as often as it needs to."""

    def __init__(self, inner: SlidingWindowInferer) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # roi_size, overlap, ... as the wrapped inferer has them
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        spatial = inputs.shape[2:]
        roi = ensure_tuple_rep(self.inner.roi_size, len(spatial))
        before = [max(int(r) - int(n), 0) // 2 for n, r in zip(spatial, roi)]
        after = [max(int(r) - int(n), 0) - b for b, n, r in zip(before, spatial, roi)]
        if all(max(b, a) < n for b, a, n in zip(before, after, spatial)):  # torch's reflect copes
            return self.inner(inputs, network, *args, **kwargs)
        widths = [(0, 0), (0, 0), *zip(before, after)]
        padded = torch.as_tensor(np.pad(inputs.detach().cpu().numpy(), widths, mode="reflect"), device=inputs.device)
        out = self.inner(padded, network, *args, **kwargs)
        box = (slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, spatial)))
        return convert_to_dst_type(out[box], inputs)[0]  # the input's meta (affine, applied operations)


def _reflect_safe(inferer: Any) -> Any:
    mode = getattr(inferer, "padding_mode", None)
    if isinstance(inferer, SlidingWindowInferer) and not isinstance(inferer, SliceInferer) and \
            getattr(mode, "value", mode) == "reflect":
        return SmallImageReflect(inferer)
    return inferer


def chain_from_config(config: dict[str, Any] | ConfigParser, in_channels: int | None = None) -> InferenceChain:
    """The chain of a bundle-style config (``preprocessing``, ``inferer``, ``postprocessing``), instantiated by
    MONAI's ``ConfigParser``; writing steps (``SaveImage[d]``) are left out of the post-processing."""
    parser = config if isinstance(config, ConfigParser) else ConfigParser(copy.deepcopy(config))
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = _reflect_safe(parser.get_parsed_content("inferer"))  # overlap-tile on pictures of any size
    post = parser.get_parsed_content("postprocessing")
    steps = post.transforms if isinstance(post, Compose) else [post]
    post = Compose([t for t in steps if not isinstance(t, (SaveImage, SaveImaged))])
    return InferenceChain(preprocessing, inferer, post, in_channels)


def build_chain(cfg: Any) -> InferenceChain:
    """The prediction chain of a medseg task config: :func:`inference_spec` through ``ConfigParser``."""
    return chain_from_config(local_targets(inference_spec(cfg)), input_channels(cfg))
