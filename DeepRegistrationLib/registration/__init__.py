"""Iterative (classical) registration: configuration and engine."""

from .config import DEFORMABLE_MODELS, LINEAR_MODELS, RegistrationConfig, StageConfig
from .landmarks import fit_landmarks
from .presets import apply_overrides, list_presets, load_preset
from .engine import RegistrationCancelled, RegistrationResult, diffusion_regulariser, register, resolve_device

__all__ = ["RegistrationConfig", "StageConfig", "register", "RegistrationResult", "RegistrationCancelled",
           "resolve_device", "load_preset", "list_presets", "apply_overrides", "fit_landmarks", "diffusion_regulariser", "LINEAR_MODELS", "DEFORMABLE_MODELS"]
