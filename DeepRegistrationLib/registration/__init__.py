"""Iterative (classical) registration: configuration, presets and engine (loaded on first use)."""

from __future__ import annotations

import importlib

_LAZY = {
    "config": ["DEFORMABLE_MODELS", "LINEAR_MODELS", "RegistrationConfig", "StageConfig"],
    "landmarks": ["fit_landmarks"],
    "presets": ["apply_overrides", "list_presets", "load_preset", "save_preset", "presets_dir"],
    "engine": ["RegistrationCancelled", "RegistrationResult", "diffusion_regulariser", "register", "resolve_device"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
