"""Loading a task: the pipeline YAML over the modality defaults over the schema defaults, then ``--set``
overrides, validated once into a :class:`~medseg.config.schema.TaskConfig`.

Layers are merged as plain dicts into a new dict (nothing is modified in place); each dotted key remembers
the layer that set it, so a bad value is reported against the file or the ``--set`` that gave it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import yaml

from medseg.config.registries import MODALITIES
from medseg.config.schema import TaskConfig, defaults, validate
from medseg.errors import MedsegError

#: Where the task YAMLs live: ``pipelines/`` beside the package (editable install / checkout).
PIPELINES_DIR = Path(__file__).resolve().parent.parent.parent / "pipelines"

#: maps replaced whole by a layer that names them (not merged key by key)
_REPLACED = {"data.labels", "data.label_map", "evaluation.classes", "preprocessing.spacing"}


def available_tasks() -> list[str]:
    """Names of the task YAMLs in ``pipelines/``."""
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))


def resolve_task(task_or_yaml: str) -> Path:
    """Return the YAML path for a task name (a file in ``pipelines/``) or a path to a YAML."""
    candidate = Path(task_or_yaml)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise MedsegError(f"{task_or_yaml}: no such pipeline YAML")
        return candidate
    path = PIPELINES_DIR / f"{task_or_yaml}.yaml"
    if not path.is_file():
        raise MedsegError(
            f"unknown task '{task_or_yaml}': available tasks are {', '.join(available_tasks()) or '(none)'};"
            " or pass a path to a pipeline YAML"
        )
    return path


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML reads it (``3`` int, ``1e-3`` float, ``[8,16]`` list, ``x`` string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_override(item: str) -> tuple[str, dict[str, Any]]:
    """``"a.b.c=value"`` -> ``("a.b.c", {"a": {"b": {"c": value}}})``."""
    if "=" not in item:
        raise MedsegError(f"--set {item}: expected key=value, e.g. training.epochs=5")
    key, text = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise MedsegError(f"--set {item}: '{key}' is not a dotted key, e.g. training.epochs=5")
    nested: dict[str, Any] = {parts[-1]: parse_value(text)}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return key, nested


def merged(base: dict[str, Any], update: dict[str, Any], prefix: str = "",
           origin: dict[str, str] | None = None, source: str = "") -> dict[str, Any]:
    """A new dict: ``update`` over ``base``, sections merged key by key (``base`` and ``update`` untouched).

    A partial ``preprocessing.window`` mapping (``window.level=50``) keeps the other half of the default one;
    ``origin`` records ``dotted key -> source`` for every key ``update`` names.
    """
    out = dict(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if origin is not None:
            origin[dotted] = source
        old = base.get(key)
        deeper = isinstance(old, dict) and isinstance(value, dict) and dotted not in _REPLACED
        if dotted == "preprocessing.window":
            deeper = deeper and set(value) < set(old)
        out[key] = merged(old, value, dotted + ".", origin, source) if deeper else value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MedsegError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(loaded, dict):
        raise MedsegError(f"{path}: a pipeline YAML must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _modality(loaded: dict[str, Any], overrides: list[tuple[str, dict[str, Any]]]) -> Any:
    data = loaded.get("data")
    modality = data.get("modality", "CT") if isinstance(data, dict) else "CT"
    for key, nested in overrides:
        if key == "data.modality":
            modality = nested["data"]["modality"]
    return modality


def load_config(task_or_yaml: str, overrides: list[str] | None = None,
                fill: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]] | None = None) -> TaskConfig:
    """Load a task config: defaults, the modality's defaults, the YAML, then ``key=value`` overrides.

    Args:
        task_or_yaml: a task name from ``pipelines/`` or a path to a YAML file.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied after the file.
        fill: ``fill(merged, origin) -> merged`` run on the merged dict before validation (``origin``: dotted
            key -> the layer that set it); :class:`medseg.plan.auto.AutoFill` plans ``auto`` keys this way.

    Returns:
        The validated config; unknown keys, wrong types, out-of-range values and unknown names raise one
        :class:`MedsegError` line naming the file (or ``--set``) and the dotted key.

    Example:
        >>> cfg = load_config("liver", overrides=["training.epochs=2"])
        >>> cfg.training.epochs, cfg.network.name
        (2, 'resunet')
    """
    path = resolve_task(task_or_yaml)
    loaded = _read_yaml(path)
    parsed = [parse_override(item) for item in overrides or []]
    origin: dict[str, str] = {}
    modality = _modality(loaded, parsed)
    cfg = merged(defaults(), MODALITIES.get(modality, {}) if isinstance(modality, str) else {}, "", origin,
                 "medseg/config/registries.py (MODALITIES)")
    cfg = merged(cfg, loaded, "", origin, str(path))
    for key, nested in parsed:
        cfg = merged(cfg, nested, "", origin, f"--set {key}")
    if fill is not None:
        cfg = fill(cfg, dict(origin))

    def source_of(key: str) -> str:  # the layer that set the key, or the nearest section above it
        while key:
            if key in origin:
                return origin[key]
            shorter = re.sub(r"(\[\d+\]|\.?[^.\[]+)$", "", key)
            key = "" if shorter == key else shorter
        return str(path)

    return validate(cfg, source_of, str(path))


def flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config (a :class:`TaskConfig` or dicts) into ``section.key -> str(value)`` (MLflow params)."""
    if isinstance(cfg, TaskConfig) or hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
