"""DeepRegistrationLib: image registration in physical space (LPS mm), classical and deep-learning based.

Conventions (see ``geometry``): LPS millimetres; tensors in array order ``(C, [D,] H, W)``; every
transform is a resampling transform mapping fixed-space points to moving-space points (ITK; Slicer
"from parent").

``import DeepRegistrationLib`` is light (no torch): the names below load their module on first use,
so the Slicer module can list presets and check dependencies before torch is installed.
"""

from __future__ import annotations

from ._lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "errors": ["DeepRegError", "InputError", "OutputError", "UnsupportedTransformError"],
    "geometry": ["Grid"],
    "image": ["Image"],
    "io": ["read_image", "read_transform", "write_image", "write_points", "write_transform", "read_points"],
    "transforms": ["AffineTransform", "CompositeTransform", "DisplacementField", "IdentityTransform", "RigidTransform",
                   "SimilarityTransform", "StationaryVelocityField", "Transform", "TranslationTransform", "compose",
                   "to_displacement_field"],
    "warp": ["warp_image"],
}
__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _LAZY)
__all__ = __all__ + ["__version__"]
