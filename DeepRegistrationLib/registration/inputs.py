"""The inputs of one registration read from files, checked the same way wherever they come from (``deepreg register``,
a row of a ``deepreg batch`` table): images, optional masks and landmarks.

Single-slice volumes become 2D images, RGB(A) images their luminance; masks of 2D images stored as single slices
follow their images. Landmarks are read in LPS mm against their image's grid and must correspond one to one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..image import Image

__all__ = ["PairInputs", "read_pair_inputs"]

PathLike = str | os.PathLike


@dataclass
class PairInputs:
    """What :func:`~DeepRegistrationLib.registration.register` needs for one pair, read and checked."""

    fixed: Image
    moving: Image
    fixed_mask: Image | None = None
    moving_mask: Image | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    moving_colour: Image | None = None  # the moving image's channels when it is RGB(A) (what the warped output shows)


def _single_channel(img: Image, notes: list[str], channel: str = "luminance") -> Image:
    if img.num_channels in (3, 4):
        notes.append(f"{img.name} is RGB(A); registering its {channel}" + (" channel" if channel != "luminance" else ""))
        return img.to_grayscale(channel)
    if img.num_channels != 1:
        raise InputError(f"{img.name}: has {img.num_channels} channels; registration needs a single-channel image")
    return img


def read_pair_inputs(fixed: PathLike, moving: PathLike, fixed_mask: PathLike | None = None,
                     moving_mask: PathLike | None = None, fixed_landmarks: PathLike | None = None,
                     moving_landmarks: PathLike | None = None, channel: str = "luminance") -> PairInputs:
    """Read and check one pair's files (see the module's description); ``notes`` says what was converted.
    ``channel``: what an RGB(A) image is registered through (:meth:`~DeepRegistrationLib.image.Image.to_grayscale`);
    ``moving_colour`` keeps a colour moving image as read, for writing the warped colour image."""
    from ..io import read_image, read_points
    from ..io.images import single_slice_as_2d
    from .landmarks import check_landmarks

    if bool(fixed_landmarks) != bool(moving_landmarks):
        raise InputError("landmarks need a fixed and a moving landmark file together")
    if os.path.exists(fixed) and os.path.exists(moving) and os.path.samefile(fixed, moving):
        raise InputError(f"{moving}: the fixed and the moving image are the same file")
    notes: list[str] = []
    fixed_img, moving_img = read_image(fixed), read_image(moving)
    flat = [single_slice_as_2d(img) if img.dim == 3 else None for img in (fixed_img, moving_img)]
    if fixed_img.dim == moving_img.dim == 3 and flat[0] is not None and flat[1] is not None:
        notes.append("both images are single slices; registering them in 2D")
        fixed_img, moving_img = flat
    elif {fixed_img.dim, moving_img.dim} == {2, 3} and (flat[0] or flat[1]) is not None:
        notes.append("a 2D image and a single slice; registering them in 2D")
        fixed_img, moving_img = flat[0] or fixed_img, flat[1] or moving_img
    moving_colour = moving_img if moving_img.num_channels in (3, 4) else None
    fixed_img, moving_img = _single_channel(fixed_img, notes, channel), _single_channel(moving_img, notes, channel)
    if fixed_img.dim != moving_img.dim:
        raise InputError(f"{fixed} is {fixed_img.dim}D but {moving} is {moving_img.dim}D")
    masks = []
    for path in (fixed_mask, moving_mask):
        mask = read_image(path) if path else None
        if mask is not None and fixed_img.dim == 2:  # masks stored as single slices, like their images
            mask = single_slice_as_2d(mask) or mask
        masks.append(mask)
    fixed_points = moving_points = None
    if fixed_landmarks:
        fixed_points = read_points(fixed_landmarks, reference=fixed_img.grid, dim=fixed_img.dim)
        moving_points = read_points(moving_landmarks, reference=moving_img.grid, dim=moving_img.dim)
        for pts, path in ((fixed_points, fixed_landmarks), (moving_points, moving_landmarks)):
            check_landmarks(pts, "rigid", path)
        if len(fixed_points) != len(moving_points):
            raise InputError(f"landmark sets differ: {len(fixed_points)} fixed ({fixed_landmarks}) vs "
                             f"{len(moving_points)} moving ({moving_landmarks}) points")
    return PairInputs(fixed_img, moving_img, masks[0], masks[1], fixed_points, moving_points, tuple(notes),
                      moving_colour)
