"""Load a MONAI Bundle for ``medseg.predict`` without executing code it carries.

A bundle that medseg wrote holds ``configs/medseg_task.json``, plain data from which medseg rebuilds the
prediction chain (:func:`medseg.inference.build_chain`, the chain its ``inference.json`` holds) and the
network itself; its weights load with ``weights_only=True``. Any other bundle is run
through MONAI's config parser, which evaluates the bundle's ``$`` expressions and instantiates its
``_target_`` classes: that is running the author's code, so it needs ``--trust``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg import __version__
from medseg.bundle import versions as bundle_versions
from medseg.bundle.safety import check_bundle_folder, extract_bundle_zip, weights_error
from medseg.errors import MedsegError
from medseg.inference import InferenceChain, build_chain, chain_from_config
from monai.bundle import ConfigParser
from medseg.config import TaskConfig
from medseg.networks import build_network
from medseg.transforms import input_channels


@dataclass
class LoadedBundle:
    name: str
    cfg: dict[str, Any] | None  # medseg task config, or None for a foreign bundle
    network: torch.nn.Module
    labels: dict[int, str]  # label value -> name, where the bundle says (metadata channel_def)
    built_chain: InferenceChain | None = None  # medseg bundles: built at load
    parser: Any = None  # MONAI ConfigParser for a trusted foreign bundle
    extracted: Any = None  # the TemporaryDirectory a .zip bundle was extracted into (lives as long as this)
    in_channels: int | None = None  # what a foreign bundle's metadata says the network takes
    root: Path | None = None  # the bundle folder (its models/ holds model.onnx for the ONNX engines)

    @property
    def chain(self) -> InferenceChain:
        """The prediction chain; a foreign bundle's comes from its inference.json on first use."""
        if self.built_chain is None:
            try:
                self.built_chain = chain_from_config(self.parser, self.in_channels)
            except KeyError as err:
                raise MedsegError(f"{self.parser['bundle_root']}/configs/inference.json: no {err} entry (preprocessing, "
                                  "inferer and postprocessing are needed to predict with it)") from None
        return self.built_chain


def _channel_def(meta: Any) -> tuple[dict[int, str], int | None]:
    """Label names and input channels from ``network_data_format`` of a bundle's metadata, where present."""
    try:
        fmt = meta["network_data_format"]
        labels = {int(k): str(v) for k, v in fmt["outputs"]["pred"]["channel_def"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        labels = {}
    try:
        channels = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
    except (KeyError, TypeError, ValueError):
        channels = None
    return labels, channels


def _foreign_targets(config: Any) -> list[str]:
    """Every `_target_` and `$` expression in a bundle config that reaches beyond MONAI and torch."""
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "_target_" and isinstance(value, str):
                root = value.split(".")[0]
                if "." in value and root not in {"monai", "torch", "scripts"}:
                    found.append(value)
            else:
                found += _foreign_targets(value)
    elif isinstance(config, list):
        for item in config:
            found += _foreign_targets(item)
    elif isinstance(config, str) and config.startswith("$"):
        found.append(config[:60])
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise MedsegError(f"{path}: not valid JSON ({err}); restore the file or re-export the bundle") from None


def load_bundle(bundle_dir: Path, device: torch.device, trust: bool = False) -> LoadedBundle:
    """Load the network and preprocessing of ``bundle_dir``, a folder or a ``.zip`` (see the module docstring for
    the trust rule; :mod:`medseg.bundle.safety` for what is refused before anything is read)."""
    bundle_dir = bundle_versions.resolve(Path(bundle_dir))  # bundles/<name>: the latest version folder it links to
    if bundle_dir.is_file() and bundle_dir.name.lower().endswith(".zip"):
        extracted = tempfile.TemporaryDirectory(prefix="medseg_bundle_")
        try:
            loaded = _load_bundle_folder(extract_bundle_zip(bundle_dir, Path(extracted.name)), device, trust)
        except BaseException:
            extracted.cleanup()
            raise
        loaded.extracted = extracted
        return loaded
    return _load_bundle_folder(bundle_dir, device, trust)


def _load_bundle_folder(bundle_dir: Path, device: torch.device, trust: bool) -> LoadedBundle:
    meta_path = bundle_dir / "configs" / "metadata.json"
    weights = bundle_dir / "models" / "model.pt"
    if not meta_path.is_file() or not weights.is_file():
        raise MedsegError(f"{bundle_dir}: not a MONAI Bundle (needs configs/metadata.json and models/model.pt)")
    check_bundle_folder(bundle_dir)
    state = _read_weights(weights, device)  # before any config is parsed: a hostile pickle stops here
    meta = _read_json(meta_path)
    name = meta.get("name", bundle_dir.name) if isinstance(meta, dict) else bundle_dir.name
    task_path = bundle_dir / "configs" / "medseg_task.json"
    if task_path.is_file():
        stored = _read_json(task_path)
        try:
            cfg = TaskConfig.from_dict(stored, source=str(task_path))
            net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
            chain = build_chain(cfg)
            labels = {int(v): str(k) for k, v in cfg.data.labels.items()}
        except (KeyError, TypeError, MedsegError) as err:
            changelog = meta.get("changelog", {}) if isinstance(meta, dict) else {}
            written = next(iter(changelog.values()), "an unknown medseg version")
            raise MedsegError(
                f"{task_path}: this task config ({written}) does not fit medseg {__version__} ({type(err).__name__}: "
                f"{err}); re-export the bundle from its run with python -m medseg.export RUN_DIR, or run it on stock "
                "MONAI with its configs/inference.json"
            ) from err
        _load_weights(net, state, weights)
        return LoadedBundle(name, cfg, net.to(device).eval(), labels, chain, root=bundle_dir)
    inference = bundle_dir / "configs" / "inference.json"
    if not inference.is_file():
        raise MedsegError(f"{bundle_dir}: not a MONAI Bundle (configs/inference.json is missing)")
    code = _foreign_targets(_read_json(inference))
    if not trust:
        example = f" (e.g. {code[0]!r})" if code else ""
        raise MedsegError(
            f"{bundle_dir}: was not written by medseg and its inference.json runs code{example}; "
            "pass --trust if you trust its author"
        )

    # as `monai.bundle run` does: the bundle's own scripts/ package is importable from its root
    for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[module]
    sys.path.insert(1, str(bundle_dir.resolve()))
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser["bundle_root"] = str(bundle_dir)
    net = parser.get_parsed_content("network_def")
    _load_weights(net, state, weights)
    labels, channels = _channel_def(meta)
    return LoadedBundle(name, None, net.to(device).eval(), labels, parser=parser, in_channels=channels,
                        root=bundle_dir)


def _read_weights(weights: Path, device: torch.device) -> Any:
    try:
        return torch.load(weights, map_location=device, weights_only=True)
    except Exception as err:  # pickle errors of many kinds: a file that is not plain tensors
        raise weights_error(weights, err) from err


def _load_weights(net: torch.nn.Module, state: Any, weights: Path) -> None:
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise MedsegError(f"{weights}: weights do not match the bundle's network ({first})") from err
