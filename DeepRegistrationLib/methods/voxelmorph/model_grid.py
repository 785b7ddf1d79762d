"""The model grid: where, at what resolution and with what intensities a network sees its images.

A network is trained and applied on one fixed grid (``size`` in index order i, j, k, ``spacing`` mm,
``direction`` as an orientation code such as ``LIA``). The grid is placed in each fixed image's physical
space (LPS mm) with its centre at the image's intensity centre of mass, so the same brain lands in the same
place whatever the scan's field of view. Intensities are normalised as the registration engine does (clip
the 0.5 / 99.5 percentiles, min-max to [0, 1]) at the image's own resolution, then smoothed with a Gaussian
of 0.5 x the model spacing and resampled (trilinear) onto the model grid: training and inference share
:func:`to_model_grid`, so a model sees at inference exactly what it saw in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ...errors import InputError
from ...geometry import Grid
from ...image import Image
from ...intensity import center_of_mass, normalise_unit_range, smooth_gaussian
from ...transforms import Transform
from ...warp import warp_image

__all__ = ["ModelInput", "smoothed_for_grid", "to_model_grid", "normalised", "check_network_input"]

_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def direction_from_code(code: str) -> np.ndarray:
    """The direction matrix (columns = index axes in LPS) of an orientation code: ``LIA`` means index axis i
    points to the patient's Left, j Inferior, k Anterior (NIfTI/ITK-SNAP style, the direction each axis grows)."""
    code = code.upper()
    axes = [int(np.flatnonzero(_AXES[c])[0]) if c in _AXES else -1 for c in code]
    if len(code) not in (2, 3) or -1 in axes or len(set(axes)) != len(code) or max(axes) >= len(code):
        raise InputError(f"not an orientation code: {code!r} (e.g. LIA, RAS, LPS; LP, RA in 2D)")
    columns = [np.array(_AXES[c][: len(code)], dtype=float) for c in code]
    return np.stack(columns, axis=1)


def orientation_code(direction: np.ndarray) -> str:
    """The nearest orientation code of a direction matrix (each index axis -> its dominant LPS axis)."""
    names = [("L", "R"), ("P", "A"), ("S", "I")]
    out = []
    for col in np.asarray(direction).T:
        axis = int(np.argmax(np.abs(col)))
        out.append(names[axis][0] if col[axis] > 0 else names[axis][1])
    return "".join(out)


@dataclass(frozen=True)
class ModelInput:
    """The input grid of a model (stored as the model card's ``input``).

    Attributes:
        size: voxels along index axes i, j, k (the tensor shape is the reverse); each divisible by 8.
        spacing: mm along i, j, k.
        orientation: orientation code of the index axes (e.g. ``LIA`` as FreeSurfer's conformed space).
        modality: what the images must be (for messages), e.g. ``T1 brain MRI, skull-stripped``.
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str
    modality: str = "T1 brain MRI, skull-stripped, affinely aligned"
    placement: str = "centre of the grid at the fixed image's intensity centre of mass"
    normalisation: str = "clip 0.5/99.5 percentiles, min-max to [0, 1], Gaussian sigma 0.5 x spacing, trilinear"

    def __post_init__(self) -> None:
        if len(self.size) != len(self.spacing) or len(self.size) not in (2, 3):
            raise InputError(f"model grid: size {self.size} and spacing {self.spacing} must both be 2D or 3D")
        if any(int(n) % 8 or int(n) <= 0 for n in self.size):
            raise InputError(f"model grid: every size must be a positive multiple of 8, got {self.size}")
        if any(float(s) <= 0 for s in self.spacing):
            raise InputError(f"model grid: spacing must be positive, got {self.spacing}")
        direction_from_code(self.orientation)

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def extent_mm(self) -> tuple[float, ...]:
        return tuple(float(n) * float(s) for n, s in zip(self.size, self.spacing))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"], d["spacing"] = list(self.size), list(self.spacing)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "ModelInput":
        try:
            return cls(size=tuple(int(n) for n in data["size"]), spacing=tuple(float(s) for s in data["spacing"]),
                       orientation=str(data["orientation"]),
                       **{k: str(data[k]) for k in ("modality", "placement", "normalisation") if k in data})
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"the model card's 'input' is not a model grid ({err!r})") from None

    def grid_at(self, center_mm: np.ndarray) -> Grid:
        """The model grid with its centre at ``center_mm`` (LPS)."""
        return Grid.centred(center_mm, self.size, self.spacing, direction_from_code(self.orientation))

    def grid_for(self, image_n: Image) -> Grid:
        """The model grid placed on ``image_n`` (a :func:`normalised` image): centred at its intensity centre of mass."""
        return self.grid_at(center_of_mass(image_n))


def normalised(image: Image) -> Image:
    """The shared intensity normalisation (clip 0.5 / 99.5 percentiles, min-max to [0, 1])."""
    return normalise_unit_range(image)


def smoothed_for_grid(image_n: Image, grid: Grid) -> Image:
    """``image_n`` smoothed with a Gaussian of 0.5 x the model spacing when the model grid is coarser than
    it (anti-aliasing before :func:`to_model_grid` samples it); unchanged otherwise."""
    sigma = 0.5 * min(grid.spacing)
    return smooth_gaussian(image_n, sigma) if sigma > 0.6 * max(image_n.grid.spacing) else image_n


def to_model_grid(image_n: Image, grid: Grid, transform: Transform | None = None,
                  interpolation: str = "linear", smooth: bool = True) -> torch.Tensor:
    """``image_n`` (already :func:`normalised`, or a label map with ``interpolation="nearest"``) seen on the
    model ``grid`` through ``transform`` (model grid point -> image point, LPS mm), as a ``(1, *grid.shape)``
    float32 tensor. Intensity images are first :func:`smoothed_for_grid` (``smooth=False``: the caller did it)."""
    if interpolation == "linear" and smooth:
        image_n = smoothed_for_grid(image_n, grid)
    return warp_image(image_n, transform, grid, interpolation).data.float()


def check_network_input(image: Image, model: ModelInput, role: str) -> list[str]:
    """Refuse what a brain model cannot register (wrong dimension, a label map) and return warnings (texts)
    for an image far from the model's expected orientation or field of view, each saying what to do."""
    if image.dim != model.dim:
        raise InputError(f"{image.name}: the {role} image is {image.dim}D but the model is {model.dim}D "
                         f"({model.modality}); use a {image.dim}D model or a classical preset")
    if image.num_channels != 1:
        raise InputError(f"{image.name}: the {role} image has {image.num_channels} channels; the model takes one")
    values = image.data
    if not torch.is_floating_point(values) or bool((values == values.round()).all()):
        distinct = torch.unique(values[:, ::2, ::2] if image.dim == 2 else values[:, ::2, ::2, ::2])
        if distinct.numel() <= 128:  # an 8-bit scan uses more grey levels than this
            raise InputError(f"{image.name}: the {role} image looks like a label map ({distinct.numel()} distinct "
                             f"integer values); the model registers intensity images ({model.modality}). Give the "
                             "scan itself; label maps go to the evaluation")
    notes = []
    code = orientation_code(image.grid.direction_matrix())
    expected = direction_from_code(model.orientation)
    cosines = np.abs(np.sum(image.grid.direction_matrix() * expected, axis=0))
    if code != model.orientation and float(cosines.min()) < np.cos(np.radians(45)):
        notes.append(f"{image.name}: stored in {code} orientation, the model was trained on {model.orientation}; "
                     "the image is resampled to the model grid, which is right only if its header orientation is "
                     "correct; if the anatomy looks rotated in a viewer, fix the header or give an initial transform")
    step = 2 if image.grid.num_voxels > 1_000_000 else 1  # every other voxel is enough for an extent
    sub = image.data[0][(slice(None, None, step),) * image.dim]
    foreground = sub > sub.float().mean()
    if bool(foreground.any()):
        idx = torch.nonzero(foreground).double() * step
        lo, hi = idx.min(0).values.flip(0).numpy(), idx.max(0).values.flip(0).numpy()
        corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)], indexing="ij")).reshape(image.dim, -1).T
        pts = image.grid.index_to_physical(corners)
        extent_in_model = np.abs((pts - pts.mean(0)) @ expected)  # along the model's axes
        fov = np.asarray(model.extent_mm)
        span = extent_in_model.max(0) * 2
        if np.any(span > 1.15 * fov) or np.all(span < 0.4 * fov):
            size = "larger than" if np.any(span > 1.15 * fov) else "far smaller than"
            notes.append(f"{image.name}: the {role} image's foreground spans {np.round(span).astype(int).tolist()} mm, "
                         f"{size} the model's field of view {np.round(fov).astype(int).tolist()} mm "
                         f"({model.modality}); crop or skull-strip it to the brain, or use a classical preset "
                         "(deformable-accurate)")
    return notes
