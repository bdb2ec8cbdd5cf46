"""Start-up of one-shot commands: packages that MONAI's own import loads but the command never uses, deferred.

``import monai`` walks all of its subpackages and ``optional_import``-s what they might use; with the full install
that pulls in ``monai.handlers`` (and through it MLflow and ignite's handlers), Matplotlib and FastAPI, about
2 s of ``python -m medseg.predict`` here (``python -X importtime``). :func:`defer` makes such a package an empty
module object that runs its code on the first attribute it lacks. Own code: ``importlib.util.LazyLoader`` runs the
code on any attribute, and MONAI reads ``__file__`` of every package it imports optionally, so nothing is saved.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterable
from typing import Any

#: what ``import monai`` loads that prediction never calls (checked by tests/inference/test_deploy.py)
PREDICT_DEFERRED = ("monai.handlers", "mlflow", "matplotlib", "matplotlib.pyplot", "fastapi")


class _Deferred(types.ModuleType):
    """A module whose code has not run: its spec attributes (``__file__``, ``__path__``...) are there; any other
    attribute runs the code first."""

    def __getattr__(self, attr: str) -> Any:
        loader = self.__dict__.pop("_medseg_deferred_loader", None)
        if loader is None:
            raise AttributeError(f"module '{self.__name__}' has no attribute '{attr}'")
        self.__class__ = types.ModuleType
        loader.exec_module(self)
        return getattr(sys.modules.get(self.__name__, self), attr)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["_medseg_deferred_loader"] = self.loader
        module.__class__ = _Deferred


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in self.names:
            return None
        for finder in sys.meta_path:  # the spec the rest of the import system gives
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


def defer(names: Iterable[str]) -> None:
    """Defer the code of the modules ``names`` (exact names; not yet imported) until an attribute they define is
    read. For a process's entry point only: the whole process shares ``sys.modules``."""
    names = [n for n in names if n not in sys.modules]
    if names and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder(names))


__all__ = ["PREDICT_DEFERRED", "defer"]
