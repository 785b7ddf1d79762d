"""Iterative (classical) registration: configuration, presets and engine (loaded on first use)."""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "config": ["DEFORMABLE_MODELS", "LINEAR_MODELS", "RegistrationConfig", "StageConfig"],
    "landmarks": ["fit_landmarks"],
    "presets": ["apply_overrides", "list_presets", "load_preset", "save_preset", "presets_dir"],
    "engine": ["RegistrationCancelled", "RegistrationResult", "diffusion_regulariser", "register", "resolve_device"],
}
__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _LAZY)
