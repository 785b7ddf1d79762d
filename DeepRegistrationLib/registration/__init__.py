"""Registration: configuration and presets (parsed and fully checked before any image is read), and the
pipeline that runs their stages through the method registry (loaded on first use)."""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "config": ["RegistrationConfig", "INITIALISATIONS", "parse_stage"],
    "landmarks": ["fit_landmarks"],
    "presets": ["apply_overrides", "list_presets", "load_preset", "save_preset", "presets_dir"],
    "pipeline": ["register", "RegistrationRequest", "check_image_pair", "check_stages"],
    "result": ["RegistrationResult"],
    ".errors": ["RegistrationCancelled", "RegistrationDiverged"],  # DeepRegistrationLib.errors, for convenience
}
__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _LAZY)
