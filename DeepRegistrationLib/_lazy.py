"""Lazy package attributes (PEP 562): ``import DeepRegistrationLib`` stays light; names load their module on use."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, namespace: dict, modules: dict[str, list[str]]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose names live in submodules ``{module: [names]}``."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f".{where[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, sorted(where)
