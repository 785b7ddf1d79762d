"""Iterative (classical) registration: configuration and engine."""

from .config import DEFORMABLE_MODELS, LINEAR_MODELS, RegistrationConfig, StageConfig
from .engine import RegistrationCancelled, RegistrationResult, diffusion_regulariser, register, resolve_device

__all__ = ["RegistrationConfig", "StageConfig", "register", "RegistrationResult", "RegistrationCancelled",
           "resolve_device", "diffusion_regulariser", "LINEAR_MODELS", "DEFORMABLE_MODELS"]
