"""File input/output: images, transforms, point sets; all writes atomic.

Names load their module on first use, so that light modules (``io.atomic``, used by the presets) never pull in torch.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "images": ["IMAGE_SUFFIXES", "read_image", "write_image"],
    "points": ["read_points", "write_points"],
    "transforms": ["read_transform", "transform_from_sitk", "transform_to_sitk", "write_transform"],
}
__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _LAZY)
