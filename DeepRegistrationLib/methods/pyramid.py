"""Multi-resolution levels in physical space, shared by the iterative stages.

A level holds both normalised images resampled to an isotropic spacing (never finer than the input along any
axis, so anisotropic images keep their coarse axis), each on a grid with the same centre and direction as its
image (:meth:`~DeepRegistrationLib.geometry.Grid.centred_at_spacing`), after a Gaussian smoothing of
``factor x spacing`` mm. Levels are keyed by ``(spacing_mm, factor)`` and built fine to coarse; a level is made
from the next finer one of the same factor where that is close enough (Gaussian variances add), which is much
cheaper than smoothing the full-resolution images again.

Every level samples the moving image *through the current transform at the fixed level's voxel centres*
(:meth:`PyramidLevel.warp_moving`) with the same sampler as :func:`~DeepRegistrationLib.warp.warp_image`, so what
is optimised is exactly what is applied afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from ..geometry import Grid
from ..errors import InputError
from ..image import Image
from ..intensity import homogeneity_weights, smooth_gaussian
from ..sampling import (gradient_norm, gradient_stack, inside_normalised, grid_to_normalised, mask_at, sample,
                        sample_normalised, sample_with_gradient)
from ..transforms.linear import LinearTransform
from ..warp import warp_image

if TYPE_CHECKING:
    from ..transforms import Transform

#: Fixed voxels drawn to estimate an intensity mapping (:func:`mapped_image`): a 64-bin joint histogram
#: is then estimated to about 0.5 % of its mass per bin, in milliseconds on any image size.
MAPPING_SAMPLES = 200_000

__all__ = ["PyramidLevel", "Pyramid", "level_grid", "feature_grid", "build_pyramid", "feature_levels", "mapped_image"]


def _slices(box: tuple[list[int], list[int]]) -> tuple[slice, ...]:
    """Array slices ``(k, j, i)`` of the grid box ``start <= (i, j, k) < stop``."""
    return tuple(slice(a, b) for a, b in zip(reversed(box[0]), reversed(box[1])))


def _bounding_box(flags: torch.Tensor, margin: int) -> tuple[list[int], list[int]] | None:
    """``(start, stop)`` in grid order ``(i, j[, k])`` of the true voxels of ``flags`` (array order ``(k, j, i)``),
    grown by ``margin`` voxels and clipped to the array; None where no voxel is true."""
    if not bool(flags.any()):
        return None
    start, stop = [], []
    for axis in reversed(range(flags.dim())):
        others = tuple(a for a in range(flags.dim()) if a != axis)
        hit = torch.nonzero(flags.any(dim=others) if others else flags)[:, 0]
        start.append(max(int(hit[0]) - margin, 0))
        stop.append(min(int(hit[-1]) + 1 + margin, flags.shape[axis]))
    return start, stop


def _grown(box: tuple[list[int], list[int]], halo: int, size) -> tuple[tuple[list[int], list[int]], tuple[slice, ...]]:
    """``box`` grown by ``halo`` voxels within a grid of ``size`` ``(i, j[, k])``, and the array slices of ``box``
    inside the grown box."""
    lo = [max(a - halo, 0) for a in box[0]]
    hi = [min(b + halo, n) for b, n in zip(box[1], size)]
    return (lo, hi), _slices(([a - b for a, b in zip(box[0], lo)], [a - b for a, b in zip(box[1], lo)]))


#: A level keeps the unsmoothed images at their own resolution (``PyramidLevel.fixed_source``, ``moving_source``)
#: where the level's spacing is at most this many times an image's finest spacing: a level that does not coarsen
#: it. Feature levels (a learned metric) are made from those: nothing smooths an image before its features.
NATIVE_SPACING_RATIO = 1.25

#: Feature levels (several channels) of at least this many voxels are sampled through ``grid_sample``'s own
#: derivative, not a stack of the features and their gradients (:func:`~DeepRegistrationLib.sampling.gradient_stack`):
#: at 1 mm over a head the stack of 8 features is 470 MB, written anew at each remake of the moving features
#: (0.1-0.7 s, mostly page faults), while a step samples 20000 points of it. The 3D slab case of the learned
#: metric: the 1 mm level 2.0 -> 1.1 s (60 steps and a remake), 470 MB less, error 1.44 -> 1.45-1.47 mm.
STACK_MAX_FEATURE_VOXELS = 2**20


def _channels_last(features: torch.Tensor, axis: int) -> torch.Tensor:
    """``features`` copied so that each voxel's values along the channel ``axis`` lie side by side (for
    ``(1, C, ...)``: PyTorch's channels-last format), whatever layout and cropping they come in: random sampling
    then reads a voxel's channels from one place. No copy when they are already so."""
    return features.movedim(axis, -1).contiguous().movedim(-1, axis)


def _extract_in_box(extractor, image: torch.Tensor, box: tuple[list[int], list[int]], halo: int) -> torch.Tensor:
    """``extractor`` ``(1, 1, ...) -> (1, C, ...)`` of ``image`` ``(1, 1, ...)`` on the grid box only, as it is on
    the whole image: computed with ``halo`` voxels of the image around the box, then cut to the box."""
    outer, inner = _grown(box, halo, list(reversed(image.shape[2:])))
    out = extractor(image[(slice(None), slice(None), *_slices(outer))])
    return out[(slice(None), slice(None), *inner)]


def feature_grid(grid: Grid) -> Grid:
    """The grid a learned metric's features are made on, for a level grid: the grid itself, or where its spacings
    differ by more than :data:`NATIVE_SPACING_RATIO` (the level of a thick-slice image, whose coarse axis the
    levels keep) the same extent at its finest spacing along every axis. The networks are trained on isotropic
    voxels: read on a 1 x 1 x 2.4 mm grid, the oblique PD-like slab as the *fixed* image against the ICBM T1
    registered 0.35 mm off; on the 1 mm grid 0.13 mm (NMI 0.07 mm)."""
    if max(grid.spacing) <= NATIVE_SPACING_RATIO * min(grid.spacing):
        return grid
    return grid.centred_at_spacing([min(grid.spacing)] * grid.dim, min_size=2)


def _nearest_on(mask: torch.Tensor, grid: Grid, onto: Grid) -> torch.Tensor:
    """``mask`` ``(1, *grid.shape)`` (0/1) on ``onto`` by nearest neighbour, ``(1, *onto.shape)``; itself where the
    grids are one."""
    if grid.same_as(onto):
        return mask
    return warp_image(Image(mask, grid), None, onto, "nearest").data.ne(0).to(mask.dtype)


def level_grid(grid: Grid, spacing_mm: float) -> Grid:
    """``grid`` resampled to ``spacing_mm`` (never finer than the original along any axis), same centre."""
    return grid.centred_at_spacing([max(float(spacing_mm), s) for s in grid.spacing], min_size=2)


@dataclass
class PyramidLevel:
    """Both images at one spacing (or their feature maps: :meth:`with_features`). Tensors live on the run's
    device. The voxel positions are the grids' own (no array of points is kept: stages map voxel indices,
    :func:`~DeepRegistrationLib.sampling.grid_to_normalised`)."""

    spacing_mm: float
    fixed: torch.Tensor  # (1, C, *shape); C = 1 for the images
    grid: Grid
    mask: torch.Tensor | None  # (1, 1, *shape), 1 inside the fixed mask
    moving: torch.Tensor  # (C, *moving_level_shape)
    moving_grid: Grid
    moving_mask: torch.Tensor | None = None  # (1, *moving_level_shape), 1 inside
    sigma_mm: float = 0.0  # Gaussian smoothing applied to the level images (mm)
    source: "PyramidLevel | None" = None  # the image level a feature level was made from
    moving_source: Image | None = None  # the unsmoothed moving image on its own grid, at a level that does not
    # coarsen it (NATIVE_SPACING_RATIO): what warped_features resamples
    fixed_source: Image | None = None  # the same for the fixed image: what with_features makes features of
    _moving_stack: torch.Tensor | None = None
    _features: dict | None = None  # feature levels made from this one, by extractor key

    @property
    def channels(self) -> int:
        return int(self.fixed.shape[1])

    def _moving_at(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving level image (its C channels) at ``grid_sample`` coordinates ``(N, dim)``, differentiable in
        ``coords`` through the image gradient (or, for a feature level of at least ``STACK_MAX_FEATURE_VOXELS``,
        through the derivative of the linear interpolation), ``(C, N)``, and whether each point is inside the
        moving image and its mask, ``(N,)``."""
        inside = inside_normalised(self.moving_grid, coords).to(self.fixed.dtype)
        if self.channels > 1 and self.moving_grid.num_voxels >= STACK_MAX_FEATURE_VOXELS:
            # differentiable through grid_sample's own derivative (that of the linear interpolation): no stack
            warped = sample_normalised(self.moving, self.moving_grid, coords, extrapolate=True) * inside
        else:
            if self._moving_stack is None:
                self._moving_stack = gradient_stack(self.moving, self.moving_grid)
            warped = sample_with_gradient(self._moving_stack, coords) * inside
        if self.moving_mask is not None:
            inside = inside * mask_at(self.moving_mask, coords)
        return warped, inside.reshape(-1)

    def _resampled_moving(self, coords: torch.Tensor, native: torch.Tensor | None = None,
                          cubic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving image at ``grid_sample`` coordinates ``coords`` ``(N, dim)`` of the moving level grid (values
        only, 0 outside the moving level grid), ``(C, N)``, and whether each point is inside the moving image and
        its mask, ``(N,)``: an image to make features of. ``native``: the same points in ``moving_source``'s grid
        coordinates (given only where the level keeps one): that unsmoothed image is then read, by cubic convolution
        (:func:`~DeepRegistrationLib.sampling.cubic_convolution`), so nothing smooths it before the features;
        otherwise the level image, smoothed by the level's Gaussian anyway, by linear interpolation (cubic there
        cost the BrainWeb capture range a step: lost at 50 deg / 50 px instead of 55). ``cubic=False``: linear
        interpolation of the unsmoothed image there too (faster)."""
        inside = inside_normalised(self.moving_grid, coords).to(self.fixed.dtype)
        if native is not None:
            source = self.moving_source
            values = sample_normalised(source.data, source.grid, native, mode="cubic" if cubic else "bilinear",
                                       extrapolate=True)
        else:
            values = sample_normalised(self.moving, self.moving_grid, coords, extrapolate=True)
        warped = values * inside
        if self.moving_mask is not None:
            inside = inside * mask_at(self.moving_mask, coords)
        return warped, inside.reshape(-1)

    def warp_moving(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving level image at the coordinates ``(N, dim)`` of every fixed level voxel, as ``(1, C, *fixed
        level shape)``, and the similarity weights ``(1, 1, *fixed level shape)``: fixed voxels whose mapped point
        is inside the moving image (and inside both masks)."""
        warped, inside = self._moving_at(coords)
        inside = inside.reshape(1, 1, *self.grid.shape)
        return warped.reshape(1, -1, *self.grid.shape), inside if self.mask is None else inside * self.mask

    def sample_moving(self, coords: torch.Tensor, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """The fixed values at flat level ``voxels`` ``(P,)`` and the moving level image at their mapped
        ``grid_sample`` coordinates ``(P, dim)`` (differentiable), ``(1, C, P, 1)`` each, with the similarity
        weights ``(1, 1, P, 1)``: the point-wise similarities then take them as they take whole levels."""
        warped, inside = self._moving_at(coords)
        if self.mask is not None:
            inside = inside * self.mask.reshape(-1).index_select(0, voxels)
        rows = self.fixed[0].movedim(0, -1)  # (*shape, C): a view without copy when stored channels-last
        if self.channels > 1 and rows.is_contiguous():  # feature levels: a voxel's channels in one cache line
            fixed = rows.reshape(-1, self.channels).index_select(0, voxels).T
        else:
            fixed = self.fixed.reshape(self.channels, -1).index_select(1, voxels)
        return fixed.reshape(1, self.channels, -1, 1), warped.reshape(1, self.channels, -1, 1), inside.reshape(1, 1, -1, 1)

    def _unsmoothed(self, which: str, grid: Grid | None = None) -> torch.Tensor:
        """``(1, 1, *grid.shape)``: the fixed (``which="fixed"``) or moving image's first channel on ``grid`` (default
        its level grid), made from the unsmoothed image where the level keeps it (``fixed_source``,
        ``moving_source``), else from the level image: the data itself where its grid is ``grid``, else resampled
        onto ``grid`` by cubic convolution."""
        if which == "fixed":
            source, own, level = self.fixed_source, self.grid, self.fixed[0, :1]
        else:
            source, own, level = self.moving_source, self.moving_grid, self.moving[:1]
        grid = own if grid is None else grid
        data, data_grid = (level, own) if source is None else (source.data[:1].to(level.device, level.dtype),
                                                               source.grid)
        if data_grid.same_as(grid):
            return data.unsqueeze(0)
        coords = grid_to_normalised(grid, data_grid, device=level.device).reshape(-1, grid.dim)
        return sample_normalised(data, data_grid, coords, mode="cubic", extrapolate=True).reshape(1, 1, *grid.shape)

    def with_features(self, key: str, extractor, support=None, moving: bool = True,
                      halo: int | None = None) -> "PyramidLevel":
        """This level with both images replaced by ``extractor(image)`` ``(1, 1, ...) -> (1, C, ...)`` (a learned
        metric's feature maps), made once per ``key`` and kept with the level; grids and moving mask
        shared. ``support(fixed image) -> (1, 1, ...)`` restricts the fixed mask to where the measure is defined
        (a learned metric: the fixed image's content). ``moving=False``: the moving features are left for
        :meth:`warped_features` to make (the feature level's ``moving`` is then an empty tensor).

        ``halo``: the extractor's receptive radius in voxels. Given, the feature level covers only the bounding
        box of the fixed mask (nothing outside it is ever compared), and the features there are exact: computed
        on the box plus ``halo`` voxels of real neighbours, which are then cut off. A 1 mm head keeps about half
        its voxels.

        At a level that does not coarsen an image (``fixed_source``, ``moving_source``) its features are made from
        the unsmoothed image (:meth:`_unsmoothed`), as :meth:`warped_features` makes the moving ones. Features are
        made on isotropic voxels (:func:`feature_grid`): a thick-slice image's level grid is resampled to its
        finest spacing along every axis first, and the feature level lies on that grid (masks resampled by nearest
        neighbour)."""
        if self._features is None:
            self._features = {}
        cache = key if halo is None else f"{key}#box"
        made = self._features.get(cache)
        if made is None or (moving and made.moving.numel() == 0):
            with torch.no_grad():
                if made is None:
                    grid = feature_grid(self.grid)
                    image = self._unsmoothed("fixed", grid)
                    mask = self.mask if self.mask is None else _nearest_on(self.mask[0], self.grid, grid)[None]
                    if support is not None:
                        mask = support(image) if mask is None else mask * support(image)
                    box = None if halo is None or mask is None else _bounding_box(mask[0, 0] > 0, 0)
                    if box is None:
                        fixed = extractor(image)
                    else:
                        grid = grid.cropped(*box)
                        mask = mask[(..., *_slices(box))].contiguous()
                        fixed = _extract_in_box(extractor, image, box, halo)
                    del image
                    fixed = _channels_last(fixed, 1)  # sample_moving gathers a voxel's C features from one place
                else:
                    grid, fixed, mask = made.grid, made.fixed, made.mask
                moving_grid, moving_mask = self.moving_grid, self.moving_mask
                features = torch.empty(0, device=self.fixed.device)
                if moving:  # on isotropic voxels too (warped_features makes its own moving grid and mask otherwise)
                    moving_grid = feature_grid(self.moving_grid)
                    if moving_mask is not None:
                        moving_mask = _nearest_on(moving_mask, self.moving_grid, moving_grid)
                    features = extractor(self._unsmoothed("moving", moving_grid))[0]
            self._features[cache] = PyramidLevel(self.spacing_mm, fixed, grid, mask, features,
                                                 moving_grid, moving_mask, self.sigma_mm, source=self)
        return self._features[cache]

    def warped_features(self, transform: "LinearTransform", extractor, halo: int | None = None,
                        margin: int = 3, interpolation: str = "cubic") -> "PyramidLevel":
        """A feature level (from :meth:`with_features`) whose moving features are those of the moving *image*
        resampled through ``transform`` onto the fixed level grid: its moving grid is the fixed grid, so it is
        sampled through the transform *relative to* ``transform`` (near the identity). Features are not
        equivariant: read through a rotation, features of the unrotated image describe rotated neighbourhoods;
        made on the image as currently warped, they do not. ``moving_mask``: where ``transform`` maps the fixed
        voxels into the moving image (and its mask).

        At a level that does not coarsen the moving image (``moving_source``) the image is the unsmoothed one on
        its own grid, resampled by cubic convolution: what the features see is then as sharp as what the fixed
        image's features see. A level image (smoothed, or resampled onto the level grid) read by
        linear interpolation is smoother than the fixed one, by a variance of 1/6 voxel^2 on average along each
        axis for the interpolation alone, and a network that places edges at iso-contours then reads curved edges
        shifted. On the 3D ICBM T1 vs PD-like slab (2.4 mm slices, 0.9 mm in plane) the learned metric's
        registration error went from 0.18 to 0.12 mm (Docs/LEARNED_METRIC.md, "Sharp images for the features").
        ``interpolation`` ``"linear"`` reads that image linearly (a remake of a 1 mm head in half the time).

        ``halo`` (the extractor's receptive radius, voxels): the moving features are made only on the bounding
        box of the fixed mask's voxels that ``transform`` maps into the moving image, grown by ``margin`` voxels
        (the room the relative transform has to move before the features must be remade), from the warped image
        on that box grown by ``halo`` voxels within this feature level, so they equal the features made on the
        whole feature level there. :meth:`with_features` with a ``halo`` makes that the bounding box of the fixed
        support: warped moving content past it (fixed background) is left out of the features within ``halo`` of
        its faces. Taking the halo from the whole image level instead cost 15.6 s and 3.8 GB against 13.6 s and
        3.1 GB on the 3D slab case, for the same error (1.52 / 1.48 mm)."""
        if self.source is None:
            raise ValueError("warped_features needs a feature level (PyramidLevel.with_features)")
        image = self.source
        dim = self.grid.dim
        with torch.no_grad():
            coords = grid_to_normalised(self.grid, image.moving_grid, transform.matrix(), transform.offset(),
                                        device=self.fixed.device).reshape(-1, dim)
            box = None
            if halo is not None:
                seen = inside_normalised(image.moving_grid, coords).reshape(self.grid.shape)
                if self.mask is not None:
                    seen = seen & (self.mask[0, 0] > 0)
                box = _bounding_box(seen, margin)
            if box is None:
                box, halo = ([0] * dim, list(self.grid.size)), 0
            # the warped image on the box grown by the halo within this feature level (the fixed support's box)
            outer, inner = _grown(box, halo, self.grid.size)
            region = coords.reshape(*self.grid.shape, dim)[_slices(outer)]
            native = None
            if image.moving_source is not None:  # the same points in the unsmoothed moving image's own grid
                native = region.reshape(-1, dim)
                if not image.moving_source.grid.same_as(image.moving_grid):
                    native = grid_to_normalised(self.grid.cropped(*outer), image.moving_source.grid,
                                                transform.matrix(), transform.offset(),
                                                device=self.fixed.device).reshape(-1, dim)
            warped, inside = image._resampled_moving(region.reshape(-1, dim), native, interpolation != "linear")
            moving = _channels_last(extractor(warped.reshape(1, 1, *region.shape[:-1]))[0][(slice(None), *inner)], 0)
            inside = inside.reshape(1, *region.shape[:-1])[(slice(None), *inner)].contiguous()
        return PyramidLevel(self.spacing_mm, self.fixed, self.grid, self.mask, moving,
                            self.grid.cropped(*box), inside, self.sigma_mm, source=image)

    def with_moving_image(self, moving: Image) -> "PyramidLevel":
        """This level with its moving image made from ``moving`` (on the moving image's grid) as the level's was:
        the same Gaussian smoothing, resampled to the same moving level grid. Masks and grids are kept."""
        data = smooth_gaussian(moving, self.sigma_mm).resample_to(self.moving_grid).data.to(self.moving.device)
        source = None if self.moving_source is None else Image(moving.data.float().to(self.moving.device), moving.grid)
        return replace(self, moving=data, moving_source=source, _moving_stack=None, _features=None)

    def sampling_candidates(self) -> torch.Tensor:
        """Flat indices of the level voxels that random sampling draws from (inside the fixed mask, if any)."""
        if self.mask is None:
            return torch.arange(self.grid.num_voxels, device=self.fixed.device)
        return torch.nonzero(self.mask.reshape(-1) > 0)[:, 0]

    def overlap_fraction(self, transform: LinearTransform) -> float:
        """Fraction of the level's fixed voxels (inside the fixed mask, if any) that ``transform`` maps into the
        moving image."""
        with torch.no_grad():
            coords = grid_to_normalised(self.grid, self.moving_grid, transform.matrix(), transform.offset(),
                                        device=self.fixed.device).reshape(-1, self.grid.dim)
            inside = inside_normalised(self.moving_grid, coords).float()
            if self.mask is not None:
                m = self.mask.reshape(-1)
                return float((inside * m).sum() / m.sum().clamp(min=1))
            return float(inside.mean())


def build_level(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                spacing_mm: float, sigma_mm: float, device: torch.device, finer: PyramidLevel | None = None) -> PyramidLevel:
    """The images at ``spacing_mm`` after Gaussian smoothing of ``sigma_mm``; from ``finer`` (a level of the same
    pyramid, already smoothed with ``finer.sigma_mm``) with the remaining ``sqrt(sigma^2 - sigma_finer^2)``."""
    fgrid = level_grid(fixed.grid, spacing_mm)
    mgrid = level_grid(moving.grid, spacing_mm)
    sigma = sigma_mm
    if finer is not None:
        fixed = Image(finer.fixed[0], finer.grid)
        moving = Image(finer.moving, finer.moving_grid)
        sigma = float(np.sqrt(max(sigma_mm**2 - finer.sigma_mm**2, 0.0)))
    else:  # smoothed and resampled where the run computes (a GPU does both in milliseconds)
        fixed = Image(fixed.data.float().to(device), fixed.grid, fixed.name)
        moving = Image(moving.data.float().to(device), moving.grid, moving.name)
    f = smooth_gaussian(fixed, sigma).resample_to(fgrid)
    m = smooth_gaussian(moving, sigma).resample_to(mgrid)
    mask = mmask = None
    if fixed_mask is not None:
        mask = warp_image(fixed_mask, None, fgrid, "nearest").data.ne(0).float().unsqueeze(0).to(device)
    if moving_mask is not None:
        mmask = warp_image(moving_mask, None, mgrid, "nearest").data.ne(0).float().to(device)
    def native(image: Image) -> Image | None:
        return image if finer is None and spacing_mm <= NATIVE_SPACING_RATIO * min(image.grid.spacing) else None

    return PyramidLevel(spacing_mm, f.data.unsqueeze(0).to(device), fgrid, mask, m.data.to(device), mgrid,
                        mmask, sigma_mm=sigma_mm, moving_source=native(moving), fixed_source=native(fixed))


def feature_levels(levels: list[PyramidLevel], similarity, moving: bool = True, crop: bool = False) -> list[PyramidLevel]:
    """``levels`` as a stage's ``similarity`` compares them: their feature maps for a similarity that extracts
    features (a learned metric), the levels themselves otherwise. ``moving=False``: the stage makes the moving
    features itself through its transform (:meth:`PyramidLevel.warped_features`); they are not made here.
    ``crop``: each feature level covers only the bounding box of its fixed mask and the similarity's support
    (:meth:`PyramidLevel.with_features` with the similarity's ``halo``)."""
    if not getattr(similarity, "extracts_features", False):
        return levels
    return [level.with_features(similarity.key, similarity.features, similarity.support, moving,
                                similarity.halo(level.grid.dim, level.fixed.device) if crop else None)
            for level in levels]


def mapped_image(fixed: Image, moving: Image, transform: "Transform", similarity, which: str = "moving",
                 seed: int = 0, homogeneity: float = 0.0) -> Image:
    """One image of the pair mapped into the other's contrast by ``similarity``'s mapping
    (:meth:`~DeepRegistrationLib.metrics.similarity.MappedLNCCLoss.fit_mapping`, the conditional mean): ``which``
    ``"moving"``: ``E[fixed | moving]`` applied to ``moving`` (on its grid); ``"fixed"``: ``E[moving | fixed]``
    applied to ``fixed`` (on its grid), e.g. a PD-like fixed image brought into a T1 moving image's contrast.

    The mapping is estimated on the unsmoothed full-resolution images ``fixed`` and ``moving`` (the stage
    context's normalised images) at :data:`MAPPING_SAMPLES` fixed voxels drawn at random (``seed``) and read in
    the moving image through ``transform`` (fixed -> moving, LPS mm); voxels mapped outside the moving image do
    not count. ``homogeneity`` > 0: voxels on an edge of either image count less
    (:func:`~DeepRegistrationLib.intensity.homogeneity_weights` of
    :func:`~DeepRegistrationLib.sampling.gradient_norm`: central differences of one voxel in physical space),
    which keeps tissues apart under the misalignment that remains before a deformable stage (a network fed the
    mapped image: OASIS PD-like / T2-like mean Dice +0.008 / +0.012 with 1.0; an SVF stage's mapped LNCC, whose
    windows rescale intensities locally, loses 0.01-0.02 and keeps 0). Per channel (channel
    ``c`` of the mapped image from channel ``c`` of the other, or its last). Smooth it afterwards
    (:meth:`PyramidLevel.with_moving_image`): mapping a smoothed non-monotonic contrast would turn partial-volume
    mixtures into wrong tissues.
    """
    if which not in ("moving", "fixed"):
        raise InputError(f"the mapped image is 'moving' or 'fixed', got {which!r}")
    generator = torch.Generator().manual_seed(int(seed))
    n = fixed.grid.num_voxels
    flat = torch.randint(n, (min(MAPPING_SAMPLES, n),), generator=generator)
    index = np.stack(np.unravel_index(flat.numpy(), fixed.grid.shape)[::-1], axis=-1).astype(np.float64)  # i, j, k
    fixed_points = torch.from_numpy(fixed.grid.index_to_physical(index))
    mapped_points = transform.map_points(fixed_points)
    inside = moving.grid.inside(torch.as_tensor(moving.grid.physical_to_index(mapped_points))).float()
    moving_values = sample(moving.data.float(), moving.grid, mapped_points)
    fixed_values = fixed.data.float().reshape(fixed.num_channels, -1)[:, flat]
    source, source_values, target_values = ((moving, moving_values, fixed_values) if which == "moving"
                                            else (fixed, fixed_values, moving_values))
    if homogeneity > 0:
        inside = homogeneity_weights(gradient_norm(fixed.data, fixed.grid, fixed_points),
                                     gradient_norm(moving.data, moving.grid, mapped_points), homogeneity, inside)
    targets = target_values.shape[0]
    channels = [similarity.fit_mapping(target_values[min(c, targets - 1)], source_values[c], inside)(
        source.data[c].float()) for c in range(source.num_channels)]
    other = "fixed" if which == "moving" else "moving"
    return Image(torch.stack(channels), source.grid, f"{source.name} (mapped to the {other} contrast)")


class Pyramid:
    """The levels of one run, keyed by ``(spacing_mm, smoothing factor)``."""

    def __init__(self, levels: dict[tuple[float, float], PyramidLevel]) -> None:
        self._levels = levels

    def levels(self, spacings: Iterable[float], factor: float) -> list[PyramidLevel]:
        """The levels of a stage, in the stage's order."""
        return [self._levels[(float(sp), float(factor))] for sp in spacings]

    def coarsest(self) -> PyramidLevel | None:
        return self._levels[max(self._levels)] if self._levels else None


def build_pyramid(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                  keys: Iterable[tuple[float, float]], device: torch.device) -> Pyramid:
    """Every level in ``keys`` (``(spacing_mm, factor)``, sigma = factor x spacing), built fine to coarse."""
    levels: dict[tuple[float, float], PyramidLevel] = {}
    for spacing, factor in sorted(set(keys)):
        finer = max((lv for (sp, fa), lv in levels.items() if fa == factor and sp < spacing),
                    key=lambda lv: lv.spacing_mm, default=None)
        if finer is not None and finer.spacing_mm * 1.25 > spacing:
            finer = None  # too close to the finer level's resolution: smooth the originals instead
        levels[(spacing, factor)] = build_level(fixed, moving, fixed_mask, moving_mask, spacing, factor * spacing,
                                                device, finer)
    return Pyramid(levels)
