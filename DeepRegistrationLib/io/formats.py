"""File suffixes the library reads and writes, by kind: one table, importable without torch (``deepreg info``,
output-path checks and the integrity checks use it before anything heavy is loaded)."""

from __future__ import annotations

__all__ = ["SITK_IMAGE_SUFFIXES", "MGH_SUFFIXES", "DETACHED_SUFFIXES", "TWO_D_ONLY_SUFFIXES", "IMAGE_SUFFIXES",
           "TRANSFORM_SUFFIXES", "DENSE_TRANSFORM_SUFFIXES", "FIELD_IMAGE_SUFFIXES"]

#: Images read and written by SimpleITK.
SITK_IMAGE_SUFFIXES = frozenset({".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                                 ".tif", ".tiff", ".bmp"})
#: FreeSurfer images (read and written by nibabel).
MGH_SUFFIXES = frozenset({".mgh", ".mgz"})
#: A header with a separate data file.
DETACHED_SUFFIXES = frozenset({".mhd", ".nhdr"})
#: Formats that hold only 2D images of 8/16-bit integers.
TWO_D_ONLY_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
IMAGE_SUFFIXES = SITK_IMAGE_SUFFIXES | MGH_SUFFIXES
#: ITK transform files.
TRANSFORM_SUFFIXES = frozenset({".h5", ".hdf5", ".tfm", ".txt", ".mat"})
#: Transform files that can hold a dense (deformable) transform.
DENSE_TRANSFORM_SUFFIXES = frozenset({".h5", ".hdf5"})
#: Images that can hold a displacement field (vector voxels, LPS mm).
FIELD_IMAGE_SUFFIXES = frozenset({".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"})
