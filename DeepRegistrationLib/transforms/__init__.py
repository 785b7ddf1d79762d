"""Transforms in physical space (LPS mm), all resampling transforms fixed -> moving."""

from .base import Transform
from .composite import CompositeTransform, IdentityTransform, compose, inverse_transform, to_displacement_field
from .dense import (DisplacementField, StationaryVelocityField, integrate_velocity, refined_grid, sample_field,
                    squaring_normalised)
from .linear import (AffineTransform, LinearTransform, RigidTransform, SimilarityTransform, TranslationTransform,
                     euler_angles_from_matrix, rotation_matrix)

__all__ = ["Transform", "LinearTransform", "IdentityTransform", "TranslationTransform", "RigidTransform",
           "SimilarityTransform", "AffineTransform", "DisplacementField", "StationaryVelocityField",
           "CompositeTransform", "compose", "to_displacement_field", "inverse_transform", "refined_grid", "sample_field", "integrate_velocity",
           "squaring_normalised", "rotation_matrix",
           "euler_angles_from_matrix"]
