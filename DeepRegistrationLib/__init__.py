"""DeepRegistrationLib: image registration in physical space (LPS mm), classical and deep-learning based.

Conventions (see ``geometry``): LPS millimetres; tensors in array order ``(C, [D,] H, W)``; every
transform is a resampling transform mapping fixed-space points to moving-space points (ITK; Slicer
"from parent").
"""

from .errors import DeepRegError, InputError, UnsupportedTransformError
from .geometry import Grid
from .image import Image
from .io import read_image, read_points, read_transform, write_image, write_points, write_transform
from .transforms import (AffineTransform, CompositeTransform, DisplacementField, IdentityTransform, RigidTransform,
                         SimilarityTransform, StationaryVelocityField, Transform, TranslationTransform, compose,
                         to_displacement_field)
from .warp import warp_image

__version__ = "0.1.0"

__all__ = ["Grid", "Image", "Transform", "IdentityTransform", "TranslationTransform", "RigidTransform",
           "SimilarityTransform", "AffineTransform", "DisplacementField", "StationaryVelocityField",
           "CompositeTransform", "compose", "to_displacement_field", "warp_image", "read_image", "write_image",
           "read_transform", "write_transform", "read_points", "write_points", "DeepRegError", "InputError",
           "UnsupportedTransformError", "__version__"]
