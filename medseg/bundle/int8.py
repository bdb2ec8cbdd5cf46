"""INT8 in a bundle: ``models/model_int8.onnx``, post-training static quantisation of ``models/model.onnx``.

ONNX Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, symmetric int8 activations: OpenVINO
fuses these into its int8 convolutions; with uint8 activations it left a zero-point subtraction and a
reference-kernel conversion around every convolution and kept the transposed convolutions in float32, 2.1x
slower here) calibrates activation ranges on patches drawn by the training dataset of the engine's builders from
the run's training cases (``bundle.int8_patches``, a few hundred at most; the same patches every export). The
ranges are moving averages of each patch's min/max: on the liver run's 200 patches the tumour's validation Dice
fell by 0.0022-0.0080 over five calibration seeds (four within the 0.005 allowed) against 0.0017-0.0096 with the
extremes over all patches (one within it; ``benchmarks/bench_int8_calibration.py``). The quantised model then
predicts the run's validation cases through the one prediction chain beside the fp32 network; its Dice per class
and the loss against fp32 are recorded in ``metadata.json`` (``medseg_int8``). A loss above
``bundle.int8_max_dice_loss`` for any class is refused: the file is removed, the refusal and the measured loss
recorded, and :class:`Int8Refused` raised after the bundle is published.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import set_rnd
from monai.transforms import LoadImage

from medseg.data.case import Case
from medseg.data.labelmaps import mapped_labels
from medseg.engine.builders import training_dataset
from medseg.errors import MedsegError
from medseg.evaluation.classes import class_dice
from medseg.inference import Forward, build_chain, run_case, torch_forward
from medseg.inference.runtimes import INT8_ENGINE, INT8_FILE, ONNX_FILE, build_engine


#: calibration patches run between two merges of the activation ranges (each holds every activation in memory)
STRIDE = 2


class Int8Refused(MedsegError):
    """The INT8 model lost more validation Dice than allowed (the bundle was written without it)."""


def calibration_patches(cfg: Any, cases: list[Case], n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` training patches ``(1, C, *patch)`` float32, drawn through the training dataset (patch sampling and
    augmentation as in training) from ``cases``; the same patches for the same ``seed`` (MONAI's random transforms
    keep their own random states: seeding torch alone gave other patches, and another INT8 verdict, per export)."""
    if not cases:
        raise MedsegError("INT8 calibration: the run has no training cases (cases.json 'train' is empty)")
    torch.manual_seed(seed)
    dataset = training_dataset(cases, cfg, cache_rate=1.0)
    set_rnd(dataset, seed)
    drawn, index = 0, 0
    while drawn < n:
        sample = dataset[index % len(dataset)]
        index += 1
        for item in sample if isinstance(sample, list) else [sample]:
            if drawn == n:
                break
            image = item["image"]
            image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
            drawn += 1
            yield np.ascontiguousarray(image[None].numpy(), dtype=np.float32)


def _reader(patches: Iterator[np.ndarray], n: int, name: str) -> Any:
    """``n`` patches as ONNX Runtime's calibration reader, in strides (``set_range``: ``CalibStridedMinMax``)."""
    # deferred: start-up of onnxruntime (~0.3 s) only in an export with INT8
    from onnxruntime.quantization import CalibrationDataReader

    class Patches(CalibrationDataReader):
        left = n

        def __len__(self) -> int:
            return n

        def set_range(self, start_index: int, end_index: int) -> None:  # the next stride (patches come in order)
            self.left = end_index - start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.left <= 0:
                return None
            self.left -= 1
            patch = next(patches, None)
            return None if patch is None else {name: patch}

    return Patches()


def quantise(models_dir: Path, cfg: Any, train_cases: list[Case], n_patches: int, seed: int = 0,
             moving_average: bool = True) -> Path:
    """Write ``models_dir/model_int8.onnx`` from ``models_dir/model.onnx`` calibrated on ``n_patches`` patches
    (drawn with ``seed``); ``moving_average``: ranges averaged over the patches' min/max, else their extremes."""
    # deferred: start-up of onnxruntime (~0.3 s) only in an export with INT8
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = models_dir / ONNX_FILE, models_dir / INT8_FILE
    with tempfile.TemporaryDirectory(prefix="medseg_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # folded, shapes inferred
        reader = _reader(calibration_patches(cfg, train_cases, n_patches, seed), n_patches, "image")
        # min/max ranges merged after every stride of patches: memory holds one stride's activations, not all
        stride = STRIDE if n_patches % STRIDE == 0 else 1
        quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"CalibStridedMinMax": stride, "ActivationSymmetric": True,
                                       "CalibMovingAverage": moving_average})
    return target


def validation_dice(cfg: Any, forwards: dict[str, Forward], cases: list[Case]) -> dict[str, dict[str, float]]:
    """Mean Dice per evaluation class over ``cases`` for each forward callable (name -> class -> Dice)."""
    if not cases:
        raise MedsegError("INT8 validation: the run has no validation cases (cases.json 'val' is empty)")
    chain = build_chain(cfg)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    classes = cfg.evaluation.classes
    sums = {name: {c: 0.0 for c in classes} for name in forwards}
    for case in cases:
        ref = mapped_labels(loader(str(case.label))[0].numpy(), cfg.effective_label_map())
        for name, forward in forwards.items():
            pred = run_case(chain, forward, case.item())[0].numpy()
            for c, members in classes.items():
                sums[name][c] += class_dice(pred, ref, members)
    return {name: {c: v / len(cases) for c, v in per.items()} for name, per in sums.items()}


def write_int8(bundle_dir: Path, cfg: Any, network: torch.nn.Module, train_cases: list[Case],
               val_cases: list[Case]) -> dict[str, Any]:
    """Quantise ``bundle_dir/models/model.onnx``, measure it on ``val_cases``, keep it or refuse it; returns what
    ``metadata.json`` records (``refused``: the loss exceeded the limit and the file is gone)."""
    bundle = cfg.bundle
    limit, n = float(bundle.int8_max_dice_loss), int(bundle.int8_patches)
    models = bundle_dir / "models"
    path = quantise(models, cfg, train_cases, n)
    engine = build_engine(INT8_ENGINE, network, models, int8=True)  # what medseg.predict --int8 runs
    fp32 = torch_forward(copy.deepcopy(network).cpu())  # a copy: the caller's network stays where it is
    dice = validation_dice(cfg, {"fp32": fp32, "int8": engine.forward}, val_cases)
    loss = {c: dice["fp32"][c] - dice["int8"][c] for c in dice["fp32"]}
    worst = max(loss, key=loss.get)
    record = {"file": f"models/{INT8_FILE}", "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights,"
              " symmetric int8 activations, moving-average min/max calibration", "calibration_patches": n,
              "validation_cases": len(val_cases), "engine": INT8_ENGINE, "dice": dice["int8"], "fp32_dice": dice["fp32"],
              "dice_loss": loss, "max_dice_loss": limit, "refused": loss[worst] > limit}
    if record["refused"]:
        path.unlink()
        record["file"] = None
    return record


def refusal(record: dict[str, Any]) -> str:
    """The one line that says why an INT8 model was refused."""
    worst = max(record["dice_loss"], key=record["dice_loss"].get)
    return (f"INT8 refused: validation Dice of '{worst}' fell by {record['dice_loss'][worst]:.4f} "
            f"({record['fp32_dice'][worst]:.4f} fp32 -> {record['dice'][worst]:.4f} int8), more than "
            f"bundle.int8_max_dice_loss {record['max_dice_loss']}; the bundle is written without models/{INT8_FILE}"
            " (allow more with python -m medseg.export RUN_DIR --int8 --set bundle.int8_max_dice_loss=..., or calibrate on"
            " more patches: --set bundle.int8_patches=...)")


__all__ = ["Int8Refused", "calibration_patches", "quantise", "refusal", "validation_dice", "write_int8"]
