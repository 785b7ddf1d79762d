"""``Image``: a torch tensor plus its physical geometry (a :class:`~DeepRegistrationLib.geometry.Grid`).

Convention: ``Image.data`` has shape ``(C, [D,] H, W)`` in array order ``([k,] j, i)`` (what
``SimpleITK.GetArrayFromImage`` returns, with a leading channel axis); the grid says where every voxel
sits in LPS millimetres. Integer dtypes mean label maps; floating dtypes mean intensities.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .errors import InputError
from .geometry import Grid

__all__ = ["Image", "COLOUR_CHANNELS"]

#: What a colour image is registered through (:meth:`Image.to_grayscale`).
COLOUR_CHANNELS = ("luminance", "red", "green", "blue")

# numpy dtypes torch cannot hold are widened losslessly.
_WIDEN = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.uint64): np.int64,
          np.dtype(np.float16): np.float32}


class Image:
    """A 2D or 3D image: ``data`` ``(C, *grid.shape)`` tensor and its ``grid``.

    Args:
        data: tensor or array of shape ``grid.shape`` or ``(C, *grid.shape)``.
        grid: the physical geometry.
        name: where the image came from (used in error messages).
    """

    def __init__(self, data: torch.Tensor | np.ndarray, grid: Grid, name: str = "image") -> None:
        if isinstance(data, np.ndarray):
            if not data.dtype.isnative:
                data = data.astype(data.dtype.newbyteorder("="))
            data = torch.from_numpy(np.ascontiguousarray(data.astype(_WIDEN.get(data.dtype, data.dtype), copy=False)))
        if data.dim() == grid.dim:
            data = data.unsqueeze(0)
        if data.dim() != grid.dim + 1 or tuple(data.shape[1:]) != grid.shape:
            raise InputError(f"{name}: data of shape {tuple(data.shape)} does not fit grid shape {grid.shape}")
        self.data = data
        self.grid = grid
        self.name = name

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.grid.dim

    @property
    def num_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Array-order spatial shape ``([k,] j, i)``."""
        return self.grid.shape

    @property
    def is_label_map(self) -> bool:
        return not (self.data.is_floating_point() or self.data.is_complex())

    def __repr__(self) -> str:
        return (f"Image(name={self.name!r}, channels={self.num_channels}, size={self.grid.size}, "
                f"spacing={tuple(round(s, 4) for s in self.grid.spacing)}, dtype={self.data.dtype})")

    # ------------------------------------------------------------------ construction / conversion
    def with_data(self, data: torch.Tensor | np.ndarray, name: str | None = None) -> "Image":
        """A new image with the same grid and other voxel values."""
        return Image(data, self.grid, name or self.name)

    def float(self) -> "Image":
        return self.with_data(self.data.float())

    def numpy(self) -> np.ndarray:
        """Voxel array in array order: ``shape`` for one channel, ``(*shape, C)`` otherwise."""
        arr = self.data.detach().cpu().numpy()
        return arr[0] if self.num_channels == 1 else np.moveaxis(arr, 0, -1)

    @classmethod
    def from_numpy(cls, array: np.ndarray, grid: Grid, channels_last: bool = False, name: str = "image") -> "Image":
        """Image from an array in array order; ``channels_last`` for ``(*shape, C)`` arrays."""
        if channels_last:
            array = np.moveaxis(array, -1, 0)
        return cls(array, grid, name)

    @classmethod
    def from_sitk(cls, image, name: str = "image") -> "Image":
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image)
        grid = Grid.from_sitk(image)
        return cls.from_numpy(array, grid, channels_last=image.GetNumberOfComponentsPerPixel() > 1, name=name)

    def to_sitk(self):
        """``SimpleITK.Image`` with the same voxels and geometry (vector image when ``C > 1``)."""
        import SimpleITK as sitk

        arr = self.numpy()
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        image = sitk.GetImageFromArray(arr, isVector=self.num_channels > 1)
        self.grid.apply_to_sitk(image)
        return image

    def to_grayscale(self, channel: str = "luminance") -> "Image":
        """Single-channel intensity image: of RGB(A) data the ``luminance`` (Rec. 601) or one ``red`` / ``green`` /
        ``blue`` channel (the green one of a fundus photograph holds the vessels' contrast); the mean of other
        multi-channel data."""
        if channel not in COLOUR_CHANNELS:
            raise InputError(f"channel must be one of {', '.join(COLOUR_CHANNELS)}, got {channel!r}")
        if self.num_channels == 1:
            return self
        data = self.data.double()
        if self.num_channels in (3, 4) and channel != "luminance":
            return self.with_data(data[COLOUR_CHANNELS.index(channel) - 1:COLOUR_CHANNELS.index(channel)].float())
        if self.num_channels in (3, 4):
            w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
            gray = (data[:3] * w.view(3, *([1] * self.dim))).sum(0, keepdim=True)
        else:
            gray = data.mean(0, keepdim=True)
        return self.with_data(gray.float())

    def as_label_map(self) -> "Image":
        """This image as an integer label map; float storage is accepted when every value is an integer."""
        if self.is_label_map:
            return self
        if self.num_channels != 1 or not bool((self.data == self.data.round()).all()):
            raise InputError(f"{self.name}: not a label map (needs one channel of integer values)")
        return self.with_data(self.data.round().to(torch.int32))

    # ------------------------------------------------------------------ checks
    def check_finite(self) -> "Image":
        """Raise :class:`InputError` when any voxel is NaN or infinite."""
        # the sum is finite iff every voxel is (cheap, no temporary the size of the image); count only on failure
        if self.data.is_floating_point() and not bool(torch.isfinite(self.data.sum(dtype=torch.float64))):
            bad = ~torch.isfinite(self.data)
            if bool(bad.any()):
                raise InputError(f"{self.name}: {int(bad.sum())} voxels are NaN or infinite")
        return self

    def check_dimension(self, dim: int) -> "Image":
        if self.dim != dim:
            raise InputError(f"{self.name}: a {dim}D image is needed, got a {self.dim}D image")
        return self

    def check_not_empty_labels(self) -> "Image":
        if not bool((self.data != 0).any()):
            raise InputError(f"{self.name}: the label map / mask is empty (no non-zero voxel)")
        return self

    # ------------------------------------------------------------------ IO and resampling (delegating)
    @classmethod
    def read(cls, path: str | os.PathLike, **kwargs) -> "Image":
        """Read any supported file or DICOM folder; see :func:`DeepRegistrationLib.io.images.read_image`."""
        from .io.images import read_image

        return read_image(path, **kwargs)

    def write(self, path: str | os.PathLike) -> None:
        """Write atomically; see :func:`DeepRegistrationLib.io.images.write_image`."""
        from .io.images import write_image

        write_image(self, path)

    def resample_to(self, reference: "Image | Grid", interpolation: str = "linear", default_value: float = 0.0) -> "Image":
        """This image sampled on ``reference``'s grid (identity mapping in physical space)."""
        from .warp import warp_image

        return warp_image(self, None, reference, interpolation=interpolation, default_value=default_value)

    # intensity helpers (implemented in intensity.py)
    def clip_percentiles(self, lower: float = 0.5, upper: float = 99.5, mask: "Image | None" = None) -> "Image":
        from .intensity import clip_percentiles

        return clip_percentiles(self, lower, upper, mask)

    def zscore(self, mask: "Image | None" = None) -> "Image":
        from .intensity import zscore

        return zscore(self, mask)

    def minmax(self, out_range: Sequence[float] = (0.0, 1.0), mask: "Image | None" = None) -> "Image":
        from .intensity import minmax

        return minmax(self, out_range, mask)
