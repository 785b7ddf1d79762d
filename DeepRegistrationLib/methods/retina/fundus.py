"""Fundus images as arrays: working resolution, field-of-view mask, contrast enhancement and vessel maps.

Arrays are 2D ``float32`` in [0, 1], indexed ``[row, column]`` (a photograph's ``(y, x)``); a working image is
the original resampled by a factor ``scale`` (working pixel ``p'`` <-> original pixel ``(p' + 0.5) / scale - 0.5``,
pixel centres aligned). OpenCV does the resampling and CLAHE, scikit-image the Frangi filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError
from .fundus_names import POLARITIES

if TYPE_CHECKING:
    import torch

    from ...geometry import Grid

__all__ = ["WorkingImage", "working_image", "field_of_view_mask", "enhance", "vesselness", "vessel_polarity",
           "POLARITIES"]



def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - the retinal presets need OpenCV
        raise InputError("the retinal stages need OpenCV: pip install opencv-python-headless") from None
    return cv2


@dataclass
class WorkingImage:
    """An image at its working resolution: ``array`` (float32 [0, 1]), its field-of-view ``mask`` (bool) and
    ``scale`` (working pixels per original pixel)."""

    array: np.ndarray
    mask: np.ndarray
    scale: float

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Working pixel coordinates ``(x, y)`` -> original continuous index ``(i, j)``."""
        return (np.asarray(points, dtype=np.float64) + 0.5) / self.scale - 0.5

    def to_working(self, index: np.ndarray) -> np.ndarray:
        return (np.asarray(index, dtype=np.float64) + 0.5) * self.scale - 0.5

    def grid(self, original: "Grid") -> "Grid":
        """The physical grid of the working pixels of an image on ``original``: same direction, pixel ``p`` at the
        original continuous index :meth:`to_original` ``(p)``."""
        from ...geometry import Grid

        origin = original.index_to_physical(self.to_original(np.zeros((1, original.dim))))[0]
        rows, cols = self.array.shape
        return Grid((cols, rows), origin, [s / self.scale for s in original.spacing], original.direction)

    def normalised(self, original: "Grid", points_mm: "torch.Tensor") -> "torch.Tensor":
        """``grid_sample`` coordinates (``align_corners=True``, float64) in this working image of physical points
        ``(..., 2)`` (LPS mm) of an image on ``original``: mm -> original index -> working pixel -> [-1, 1]."""
        import torch

        to_index = torch.as_tensor(original.physical_to_index_matrix(), dtype=torch.float64)
        index = points_mm.double() @ to_index[:2, :2].T + to_index[:2, 2]
        rows, cols = self.array.shape
        size = torch.tensor([cols - 1, rows - 1], dtype=torch.float64)
        return ((index + 0.5) * self.scale - 0.5) * (2.0 / size) - 1.0


def field_of_view_mask(array: np.ndarray, erosion_px: int = 0, threshold: float = 0.1) -> np.ndarray:
    """The camera's field of view: pixels brighter than ``threshold`` x the 99th percentile (after a 3 px blur),
    holes filled, the largest connected region kept, eroded by ``erosion_px`` (keypoints on the rim of the
    field of view match in every pair and would pull towards the identity)."""
    cv2 = _cv2()
    smooth = cv2.GaussianBlur(array.astype(np.float32), (0, 0), 3)
    level = float(np.percentile(smooth, 99)) * threshold
    mask = (smooth > level).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count > 1:
        mask = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    # fill holes: everything not reachable from the border through background is inside
    flood = np.pad(1 - mask, 1, constant_values=1)  # a background frame: the field of view may touch the border
    cv2.floodFill(flood, None, (0, 0), 2)
    mask = np.where(flood[1:-1, 1:-1] == 2, 0, 1).astype(np.uint8)
    if erosion_px > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erosion_px + 1,) * 2))
    if not mask.any():
        raise InputError("the image has no field of view (it is dark everywhere)")
    return mask.astype(bool)


def working_image(array: np.ndarray, long_side: int) -> WorkingImage:
    """``array`` (float [0, 1]) resampled so that its longer side has ``long_side`` pixels (area averaging when
    shrinking), with its field-of-view mask."""
    cv2 = _cv2()
    scale = min(1.0, long_side / max(array.shape))
    small = array.astype(np.float32)
    if scale < 1.0:
        small = cv2.resize(small, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        scale = small.shape[1] / array.shape[1]
    return WorkingImage(small, field_of_view_mask(small), scale)


def enhance(image: WorkingImage, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE of the image inside its field of view (``uint8``, 0 outside): local contrast, so that the fine
    vessels of a dim photograph give keypoints."""
    cv2 = _cv2()
    values = image.array[image.mask]
    lo, hi = np.percentile(values, [0.5, 99.5])
    u8 = (np.clip((image.array - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    out = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(u8)
    out[~image.mask] = 0
    return out


def vessel_polarity(image: WorkingImage) -> str:
    """``dark`` vessels on a brighter fundus (colour photograph, red-free) or ``bright`` ones (angiogram), guessed from
    the skewness of the intensities in the field of view (a few bright vessels on a dark background skew right).
    A guess: a bright optic disc or reflections can skew a photograph right too (FIRE P01_1 does), so the retinal
    presets name each image's polarity instead."""
    values = image.array[image.mask].astype(np.float64)
    centred = values - values.mean()
    skew = float((centred**3).mean() / max(centred.std() ** 3, 1e-12))
    return "bright" if skew > 0 else "dark"


def vesselness(image: WorkingImage, polarity: str = "auto", sigmas_px=(1.0, 2.0, 3.0, 4.0)) -> np.ndarray:
    """Frangi vesselness (scikit-image; float32 [0, 1], 0 outside the field of view and on its rim) for vessels of
    the given polarity (``auto``: :func:`vessel_polarity`), divided by its 99.5th percentile in the field of view."""
    from skimage.filters import frangi

    if polarity not in POLARITIES:
        raise InputError(f"vessel polarity must be one of {POLARITIES}, got {polarity!r}")
    polarity = vessel_polarity(image) if polarity == "auto" else polarity
    response = frangi(image.array, sigmas=list(sigmas_px), black_ridges=polarity == "dark").astype(np.float32)
    inner = field_of_view_mask(image.array, erosion_px=int(round(2 * max(sigmas_px))))
    response[~inner] = 0
    top = float(np.percentile(response[inner], 99.5)) if inner.any() else 0.0
    return np.clip(response / top, 0, 1) if top > 0 else response
