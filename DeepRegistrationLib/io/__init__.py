"""File input/output: images, transforms, point sets; all writes atomic."""

from .images import IMAGE_SUFFIXES, read_image, write_image
from .points import read_points, write_points
from .transforms import read_transform, transform_from_sitk, transform_to_sitk, write_transform

__all__ = ["read_image", "write_image", "read_transform", "write_transform", "transform_to_sitk",
           "transform_from_sitk", "read_points", "write_points", "IMAGE_SUFFIXES"]
