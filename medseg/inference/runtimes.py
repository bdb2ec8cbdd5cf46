"""Engines: which runtime does the forward passes of the one chain (``torch``, ``onnxruntime``, ``openvino``,
``openvino-bf16``).

An engine gives the sliding window its ``forward`` callable (:data:`medseg.inference.engines.Forward`); the
preprocessing, windows, inversion and post-processing stay the chain's. The ONNX engines run a bundle's
``models/model.onnx`` (or ``model_int8.onnx``) inside the same :class:`PadToMultiple` the torch network has, so
any window size works as with torch. Each runtime uses as many threads as torch (``torch.get_num_threads()``).
``openvino`` computes in float32 (the masks torch gives); ``openvino-bf16`` lets OpenVINO compute in bfloat16 on
CPUs that have it (AMX or AVX512-BF16; float32 elsewhere): 0.7x of float32's forward time on the liver bundle here,
but not torch's masks (whole-CT Dice against torch 0.988 liver, 0.957 tumour; ``benchmarks/bench_deploy.py``).

Example:
    >>> forward = build_engine("onnxruntime", bundle.network, bundle_dir / "models").forward
    >>> labels = run_case(chain, forward, {"image": "ct.nii.gz"})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.inference.engines import Forward, torch_forward
from medseg.networks.padding import PadToMultiple

ENGINES = ("torch", "onnxruntime", "openvino", "openvino-bf16")
#: pip package of each runtime (both are medseg dependencies; a missing one is named with its pip command)
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}
ONNX_FILE, INT8_FILE = "model.onnx", "model_int8.onnx"
#: the runtime of ``--int8`` without ``--engine``: on the liver bundle OpenVINO's INT8 forward took 0.22x torch fp32's,
#: ONNX Runtime's 1.19x (its QDQ 3D convolutions; benchmarks/bench_deploy.py)
INT8_ENGINE = "openvino"


class _Session(torch.nn.Module):
    """A runtime's compiled model as a module: ``(N, C, *patch)`` tensor in, logits tensor out (same device)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
        return torch.from_numpy(np.asarray(out)).to(x.device)


@dataclass
class Engine:
    """``name``: the runtime; ``forward``: what the sliding window calls; ``model``: the file it runs (or None)."""

    name: str
    forward: Forward
    model: Path | None = None


def _wrap(network: torch.nn.Module, session: _Session) -> Forward:
    """The session inside the network's own size padding (the ONNX graph is the network without it)."""
    if isinstance(network, PadToMultiple):
        return PadToMultiple(session, network.multiple, network.size or None, network.minimum).eval()
    return session.eval()


def onnxruntime_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort  # deferred: an optional runtime, imported only when chosen

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnxruntime(path: Path, threads: int | None) -> _Session:
    session = onnxruntime_session(path, threads)
    name = session.get_inputs()[0].name
    return _Session(lambda x: session.run(None, {name: x})[0])


def _openvino(path: Path, threads: int | None, bf16: bool = False, first: tuple[int, ...] | None = None) -> _Session:
    import openvino as ov  # deferred: an optional runtime, imported only when chosen

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "PERFORMANCE_HINT": "LATENCY"}
    if bf16:
        config["INFERENCE_PRECISION_HINT"] = "bf16"  # OpenVINO falls back to f32 on CPUs without bf16
    elif INT8_FILE not in path.name:
        config["INFERENCE_PRECISION_HINT"] = "f32"  # no silent bf16 on CPUs that have it: same masks as torch
    model = core.read_model(str(path))
    compiled = _ShapeCompiled(core, model, config)
    if first is None or not compiled.prepare(first):  # a model OpenVINO cannot compile fails here, at load
        compiled.dynamic = core.compile_model(model, "CPU", config)
    return _Session(compiled)


class _ShapeCompiled:
    """An OpenVINO model compiled once per input shape it is called with (at most ``keep`` shapes, the least
    recently used dropped). Own cache: OpenVINO's dynamic-shape kernels ran a float32 batch of two 64x96x96
    windows in 0.086 s against 0.072 s for the same model reshaped to that static shape (liver bundle, 2 threads);
    a sliding window calls it with one or two shapes. A shape the graph cannot be reshaped to runs on
    ``dynamic``, the model compiled as it is (at load when the sliding window's shape is not known or cannot be
    compiled, else when first needed). The sliding window's own shape is compiled at load (:meth:`prepare`): a
    dynamic compile nothing would run is not made (0.2 s of a process on 2 cores), and the first window batch
    of a case does not wait for a compile."""

    def __init__(self, core: Any, model: Any, config: dict[str, Any], dynamic: Any = None, keep: int = 4) -> None:
        self.core, self.model, self.config, self.dynamic, self.keep = core, model, config, dynamic, keep
        self.compiled: dict[tuple[int, ...], Any] = {}

    def _static(self, shape: tuple[int, ...]) -> Any:
        """The model compiled for ``shape``; None when the graph cannot take it (a graph that fixes a size)."""
        model = self.model.clone()
        try:
            model.reshape(list(shape))
            return self.core.compile_model(model, "CPU", self.config)
        except RuntimeError:  # OpenVINO's error for a shape the graph cannot be reshaped to
            return None

    def prepare(self, shape: tuple[int, ...]) -> bool:
        """Compile ``shape`` now; False when the graph cannot take it."""
        compiled = self._static(shape)
        if compiled is not None:
            self.compiled[shape] = compiled
        return compiled is not None

    def __call__(self, x: np.ndarray) -> Any:
        shape = tuple(x.shape)
        compiled = self.compiled.pop(shape, None)
        if compiled is None:
            compiled = self._static(shape)
            if compiled is None:
                if self.dynamic is None:
                    self.dynamic = self.core.compile_model(self.model, "CPU", self.config)
                compiled = self.dynamic
            while len(self.compiled) >= self.keep:
                self.compiled.pop(next(iter(self.compiled)))
        self.compiled[shape] = compiled  # most recently used last
        return compiled(x)[compiled.output(0)]


def _metadata(bundle_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _run_folder(bundle_dir: Path) -> str:
    """The training run a medseg bundle names in ``metadata.json`` (``medseg_export.run``), else ``RUN_DIR``."""
    try:
        return str(_metadata(bundle_dir)["medseg_export"]["run"])
    except (KeyError, TypeError):
        return "RUN_DIR"


def _missing_int8(bundle_dir: Path) -> str:
    """Why a bundle has no INT8 model and what writes one: an export that refused it (``medseg_int8.refused``)
    needs a larger allowed loss, not the same export again (its calibration patches are the same every time)."""
    run = _run_folder(bundle_dir)
    record = _metadata(bundle_dir).get("medseg_int8")
    try:
        if isinstance(record, dict) and record.get("refused"):
            loss = record["dice_loss"]
            worst = max(loss, key=loss.get)
            return (f"missing: its INT8 model was refused at export (validation Dice of '{worst}' fell by "
                    f"{loss[worst]:.4f}, more than bundle.int8_max_dice_loss {record['max_dice_loss']}); run without"
                    f" --int8, or write a new version allowing more: python -m medseg.export {run} --int8 --set"
                    " bundle.int8_max_dice_loss=...")
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return (f"missing (this bundle was exported without INT8); write a new version with python -m medseg.export "
            f"{run} --int8")


_LOADERS = {"onnxruntime": lambda path, threads, first: _onnxruntime(path, threads),
            "openvino": lambda path, threads, first: _openvino(path, threads, first=first),
            "openvino-bf16": lambda path, threads, first: _openvino(path, threads, bf16=True, first=first)}


def window_input(chain: Any) -> tuple[int, ...] | None:
    """The input shape ``(windows, channels, *roi)`` of a full batch of the chain's sliding window (MONAI's
    ``SlidingWindowInferer`` / ``SliceInferer``), before the network's size padding; None when not fixed."""
    inferer = getattr(chain, "inferer", None)
    roi, batch = getattr(inferer, "roi_size", None), getattr(inferer, "sw_batch_size", None)
    channels = getattr(chain, "in_channels", None)
    if roi is None or not batch or not channels:
        return None
    roi = [int(roi)] if isinstance(roi, int) else [int(v) for v in roi]
    if any(v <= 0 for v in roi):  # MONAI's "the image's size on this axis"
        return None
    return (int(batch), int(channels), *roi)


def build_engine(name: str, network: torch.nn.Module, models_dir: Path | None, *, int8: bool = False,
                 device: torch.device | str = "cpu", threads: int | None = None,
                 window: tuple[int, ...] | None = None) -> Engine:
    """The engine ``name`` for a bundle whose network is ``network`` and whose model files are in ``models_dir``.

    ``int8``: run ``model_int8.onnx`` (an ONNX engine; ``torch`` is then replaced by :data:`INT8_ENGINE`). A runtime
    that is not installed, a model file that is missing or that the runtime cannot load: one-line
    :class:`MedsegError`. ``window``: the input shape the sliding window calls with (:func:`window_input`);
    OpenVINO compiles it at load.
    """
    if name not in ENGINES:
        raise MedsegError(f"--engine {name}: choose one of {', '.join(ENGINES)}")
    if name == "torch" and not int8:
        return Engine(name, torch_forward(network, device))
    if name == "torch":
        name = INT8_ENGINE
    if torch.device(device).type != "cpu":
        raise MedsegError(f"--engine {name}: runs on the CPU here; use --device cpu (or --engine torch on CUDA)")
    try:
        __import__(PACKAGES[name])
    except ImportError:
        raise MedsegError(f"--engine {name}: the {PACKAGES[name]} package is not installed; "
                          f"pip install {PACKAGES[name]}") from None
    if models_dir is None:
        raise MedsegError(f"--engine {name}: this bundle has no model files medseg can find; use --engine torch")
    path = Path(models_dir) / (INT8_FILE if int8 else ONNX_FILE)
    if not path.is_file():
        if int8:
            raise MedsegError(f"{path}: {_missing_int8(Path(models_dir).parent)}")
        raise MedsegError(f"{path}: missing (this bundle was written before medseg exported ONNX); write a new "
                          f"version with python -m medseg.export {_run_folder(Path(models_dir).parent)}")
    try:
        first = None
        if window is not None:  # the shape the session sees: after the network's own size padding
            spatial = network._target(list(window[2:])) if isinstance(network, PadToMultiple) else window[2:]
            first = (*window[:2], *spatial)
        session = _LOADERS[name](path, threads, first)
    except Exception as err:  # the runtime's own error types; one line naming the file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise MedsegError(f"{path}: {name} cannot load it ({reason}); re-export the bundle or use --engine torch") from None
    return Engine(name, _wrap(network, session), path)


__all__ = ["ENGINES", "INT8_ENGINE", "Engine", "build_engine", "onnxruntime_session", "window_input"]
