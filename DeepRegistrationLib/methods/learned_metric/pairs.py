"""Training pairs of the learned metric: two renderings of one real image, one of them misaligned by a known,
smooth displacement.

Everything is in voxel units of the level an example is drawn from. A training image is first brought to the
pyramid levels the optimisers use (:func:`~DeepRegistrationLib.methods.pyramid.level_grid` after the same
Gaussian smoothing, ``smoothing x spacing`` mm), so the network sees at training what it sees in a
registration. An example is a crop of one level image ``A``, a second rendering ``B`` of the same crop
(a random intensity mapping: a "modality" with the same geometry, or the same contrast), and a displacement
``u`` (voxels): a smooth random field, in half of the examples plus a rotation of up to 30 degrees about a
point of the crop (so that a neighbourhood seen rotated but not displaced still counts as aligned: the features
must tolerate rotation, which the optimisers meet at every coarse level). Where a training image comes with
a label map, the second rendering of some examples is a rendering of the labels instead (random intensity per
label, :func:`~DeepRegistrationLib.intensity.render_labels`, made at the image's resolution and brought to the
levels like the image): a contrast that is no function of the first image, with the smooth, partial-volume edges
of a tissue-map rendering (:func:`level_renderings`). The moving features are read at ``x + u(x)``. The target
is ``1 - exp(-|u| / s)``: 0 when aligned, with a slope at 0 (sub-voxel offsets carry weight in the loss, which
makes the minimum precise), 1 far away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...image import Image
from ...intensity import contrast_curve, normalise_unit_range, render_labels, smooth_gaussian
from ..pyramid import level_grid

__all__ = ["PairConfig", "LevelImages", "level_images", "level_renderings", "random_contrast", "random_displacement",
           "random_rotation", "crop_alike", "thick_slices", "blurred", "outline_band", "make_batch", "target_score"]


@dataclass
class PairConfig:
    """How examples are drawn.

    Attributes:
        crop: crop size in voxels (each axis).
        spacings_mm: pyramid spacings the level images are made at.
        smoothing: Gaussian sigma of a level = this x its spacing (the presets' ``smoothing_sigma_mm``).
        scale_voxels: ``s`` of the target (voxels).
        max_rotation_deg: largest rotation drawn (half of the examples have one).
        max_offset_voxels: largest RMS displacement drawn (log-uniform from 0.03 voxel).
        aligned_fraction: share of examples with no displacement.
        contrast_probability: share of examples whose second image is a random intensity mapping of the first.
        noise: largest Gaussian noise sigma added to each image (intensities in [0, 1]).
        thick_slice_probability: share of examples whose one image (either) is seen as thick slices: averaged
            along one random axis over a slice of ``1 .. max_slice_voxels`` voxels (a Gaussian of the box's
            variance), as a 2.4 mm slab is against a 1 mm image: the resolution differs, the alignment does not.
        max_slice_voxels: thickest slice drawn (voxels of the level).
        blur_probability: share of examples whose one image (either) is smoothed along every axis
            (:func:`blurred`, sigma up to ``max_blur_voxels``) before its noise: sharp against smooth. Without it, a
            network locates curved edges in a smoother image where their iso-contours are (inside a convex
            bright region), not where the anatomy is: the 3D model of 2026-12-07 put a T1 and a PD-like slab
            0.24 voxel apart along the slab's normal at the truth, 0.08 voxel for T1 against T1 on the same slab.
        max_blur_voxels: largest sigma drawn (voxels of the level).
        slope_offset_voxels: 0, or the largest extra translation ``e`` (voxels; its length is drawn between half
            of this and this, its direction at random) at which each example's moving features are read twice
            more, at ``x + u(x) + e`` and ``x + u(x) - e``, each with its own target: the examples of the slope
            term (:class:`~.training.MetricTrainConfig` ``slope_weight``).
        outline_probability: share of the random-contrast examples whose second rendering takes a second,
            independent mapping in a band along the object's outline (:func:`outline_band`, ``1 ..
            max_outline_voxels`` wide): skin, scalp and fat around a head relate between MR contrasts by no one
            function of the first image, which mappings of the whole image never show.
        max_outline_voxels: widest outline band drawn (voxels of the level).
        render_probability: share of the mixed-contrast examples whose second image is one of the image's label
            renderings (:attr:`LevelImages.renderings`; images without any keep the random mapping), itself
            through a random intensity mapping.
    """

    crop: int = 96
    spacings_mm: Sequence[float] = (1.0, 2.0, 4.0)
    smoothing: float = 0.5
    scale_voxels: float = 3.0
    max_offset_voxels: float = 12.0
    max_rotation_deg: float = 30.0
    aligned_fraction: float = 0.2
    contrast_probability: float = 0.8
    noise: float = 0.03
    thick_slice_probability: float = 0.0
    max_slice_voxels: float = 3.0
    blur_probability: float = 0.0
    max_blur_voxels: float = 1.2
    slope_offset_voxels: float = 0.0
    outline_probability: float = 0.0
    max_outline_voxels: int = 6
    render_probability: float = 0.0


@dataclass
class LevelImages:
    """One training image at every spacing: tensors ``(*shape)`` in [0, 1] (2D, or 3D volumes); ``renderings``:
    label renderings of the same image, each a list like ``levels`` (same shapes, aligned voxel for voxel)."""

    name: str
    levels: list[torch.Tensor]
    renderings: list[list[torch.Tensor]] = field(default_factory=list)


def level_images(image: Image, spacings_mm: Sequence[float], smoothing: float) -> LevelImages:
    """``image`` normalised as the pipeline does (0.5 / 99.5 percentiles to [0, 1]) and brought to each level."""
    image = normalise_unit_range(image)
    levels = [smooth_gaussian(image, smoothing * sp).resample_to(level_grid(image.grid, sp)).data[0].float()
              for sp in spacings_mm]
    return LevelImages(image.name, levels)


def level_renderings(labels: Image, image: Image, spacings_mm: Sequence[float], smoothing: float, count: int,
                     seed: int) -> list[list[torch.Tensor]]:
    """``count`` renderings of the label map ``labels`` (an integer image on ``image``'s grid): each label a random
    intensity (:func:`~DeepRegistrationLib.intensity.render_labels`: uniform means, a little noise, a blur of up to
    a voxel; label 0, the background, stays 0), made at the image's resolution, normalised and brought to each level
    exactly as :func:`level_images` brings the image (so partial volumes at the coarse levels are the rendering's,
    not a nearest-neighbour label's)."""
    if not labels.grid.same_as(image.grid):
        raise InputError(f"{labels.name}: the label map is not on the grid of {image.name} (resample it with nearest "
                         "neighbour first)")
    g = torch.Generator().manual_seed(seed)
    values, foreground = labels.data.long(), labels.data > 0
    out = []
    for _ in range(count):
        rendered = render_labels(values, g) * foreground  # the background dark, as the image's
        rendered = Image(rendered, image.grid, f"{image.name} rendering")
        out.append(level_images(rendered, spacings_mm, smoothing).levels)
    return out


def _slice(volumes: list[torch.Tensor], dim: int, g: torch.Generator) -> list[torch.Tensor]:
    """One 2D slice along a random axis of 3D ``volumes`` (the same for each; through the middle 60 %) when ``dim``
    is 2; else ``volumes``."""
    if volumes[0].dim() == dim:
        return volumes
    axis = int(torch.randint(3, (1,), generator=g))
    n = volumes[0].shape[axis]
    index = int(n * 0.2 + torch.rand(1, generator=g) * n * 0.6)
    return [v.select(axis, min(index, n - 1)) for v in volumes]


def crop_alike(images: list[torch.Tensor], size: int, g: torch.Generator) -> list[torch.Tensor]:
    """The same ``size``-wide crop of each of ``images`` (one shape), centred on a random voxel of the first brighter
    than 0.05 (zero padded where the image is smaller)."""
    image = images[0]
    fg = torch.nonzero(image > 0.05)
    centre = fg[int(torch.randint(len(fg), (1,), generator=g))] if len(fg) else torch.tensor(image.shape) // 2
    pads, slices = [], []
    for c, n in zip(centre.tolist(), image.shape):
        lo = c - size // 2
        slices.append(slice(max(lo, 0), min(lo + size, n)))
        pads.append((max(-lo, 0), max(lo + size - n, 0)))
    flat = [p for pair in reversed(pads) for p in pair]
    return [F.pad(x[tuple(slices)], flat) for x in images]


def random_contrast(image: torch.Tensor, g: torch.Generator, knots: int = 4) -> torch.Tensor:
    """A random piecewise-linear intensity mapping of ``image`` (values in [0, 1]): a different "modality" of the
    same geometry (the functional relation MI assumes), background kept at 0 in 80 % of the draws."""
    values = torch.rand(knots, generator=g)
    if float(torch.rand(1, generator=g)) < 0.8:
        values[0] = 0.0
    return contrast_curve(image, values / values.max().clamp(min=1e-3))


def outline_band(image: torch.Tensor, width: int) -> torch.Tensor:
    """A soft ``(*shape)`` weight, 1 within ``width`` voxels inside the outline of ``image``'s content (above 0.05,
    holes filled: the outer surface only, not the edges of dark structures inside), 0 elsewhere, its edge
    smoothed over about one voxel."""
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(image.numpy() > 0.05)
    band = filled & ~ndimage.binary_erosion(filled, iterations=max(1, int(width)))
    return torch.from_numpy(ndimage.gaussian_filter(band.astype("float32"), 0.7)).to(image.dtype)


def _smooth_along(image: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """``image`` ``(*shape)`` convolved along ``axis`` with a Gaussian of ``sigma`` voxels, the border repeated."""
    from ...intensity import gaussian_kernel_1d

    kernel = gaussian_kernel_1d(sigma).float()
    r = (kernel.numel() - 1) // 2
    line = image.movedim(axis, -1)
    shape = line.shape
    flat = F.pad(line.reshape(-1, 1, shape[-1]), (r, r), mode="replicate")
    out = F.conv1d(flat, kernel.view(1, 1, -1)).reshape(shape)
    return out.movedim(-1, axis).contiguous()


def thick_slices(image: torch.Tensor, g: torch.Generator, max_voxels: float) -> torch.Tensor:
    """``image`` ``(*shape)`` averaged along one random axis over a slice ``w`` of ``1 .. max_voxels`` voxels: a
    Gaussian of sigma ``w / sqrt(12)`` (the variance of a box ``w`` wide), the border repeated; same shape."""
    width = 1.0 + float(torch.rand(1, generator=g)) * max(max_voxels - 1.0, 0.0)
    axis = int(torch.randint(image.dim(), (1,), generator=g))
    return _smooth_along(image, width / 12 ** 0.5, axis)


def blurred(image: torch.Tensor, g: torch.Generator, max_sigma: float) -> torch.Tensor:
    """``image`` ``(*shape)`` smoothed along every axis by a Gaussian of sigma drawn uniformly in ``0 .. max_sigma``
    voxels (the border repeated; same shape): one image sharper than the other, as two scans of different
    resolution are, or a fixed image against a moving one read through a linear interpolation (variance
    ``f (1 - f)`` voxel^2 at a fraction ``f``: 1/6 on average)."""
    sigma = float(torch.rand(1, generator=g)) * max_sigma
    if sigma < 0.05:
        return image
    for axis in range(image.dim()):
        image = _smooth_along(image, sigma, axis)
    return image


def random_displacement(shape: Sequence[int], amplitude: float, g: torch.Generator) -> torch.Tensor:
    """A smooth random displacement ``(dim, *shape)`` in voxels (array axis order) whose RMS length is
    ``amplitude``: noise on 3 nodes per axis, linearly upsampled, plus a translation."""
    dim = len(shape)
    coarse = torch.randn(1, dim, *([3] * dim), generator=g)
    mode = "trilinear" if dim == 3 else "bilinear"
    field = F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)[0]
    field = field + torch.randn(dim, *([1] * dim), generator=g)
    rms = field.pow(2).sum(0).mean().sqrt().clamp(min=1e-6)
    return field * (amplitude / rms)


def random_rotation(shape: Sequence[int], max_deg: float, g: torch.Generator) -> torch.Tensor:
    """The displacement ``R (x - c) + c - x`` ``(dim, *shape)`` (voxels, array order) of a rotation by up to
    ``max_deg`` about a random point ``c`` of the middle half of the crop (about a random axis in 3D)."""
    dim = len(shape)
    angle = float((torch.rand(1, generator=g) * 2 - 1) * max_deg) * torch.pi / 180
    if dim == 2:
        c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
        rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    else:
        axis = torch.randn(3, generator=g)
        axis = axis / axis.norm()
        k = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        rot = torch.linalg.matrix_exp(angle * k)
    centre = torch.tensor([n * (0.25 + 0.5 * float(torch.rand(1, generator=g))) for n in shape])
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(dim, -1) - centre[:, None]
    return (rot @ x - x).reshape(dim, *shape)


def target_score(displacement: torch.Tensor, scale_voxels: float) -> torch.Tensor:
    """``1 - exp(-|u| / s)`` of a displacement ``(dim, ...)`` (voxels): ``(1, ...)``."""
    return 1.0 - torch.exp(-displacement.pow(2).sum(0, keepdim=True).sqrt() / scale_voxels)


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` coordinates ``(1, *shape, dim)`` (align_corners=True) of ``x + u(x)``."""
    dim = displacement.shape[0]
    shape = displacement.shape[1:]
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij")) + displacement  # (dim, *shape), array order
    norm = torch.stack([2 * index[a] / max(shape[a] - 1, 1) - 1 for a in range(dim)])
    return norm.flip(0).movedim(0, -1).unsqueeze(0)  # grid_sample wants (x, y[, z])


def make_batch(images: list[LevelImages], dim: int, batch: int, config: PairConfig,
               g: torch.Generator, contrast_probability: float | None = None) -> dict[str, torch.Tensor]:
    """``batch`` examples: ``fixed``, ``moving`` ``(B, 1, *crop)``, ``grid`` (where the moving features are read),
    ``target`` ``(B, 1, *crop)`` and ``weight`` (1 on voxels with content, away from the crop border); with
    ``config.slope_offset_voxels`` also ``shifted_grid`` ``(B, 2, *crop, dim)`` and ``shifted_target``
    ``(B, 2, 1, *crop)``: the same examples read a small random translation ``+e`` and ``-e`` further (the weight
    does not change: the border margin covers the translation).
    ``contrast_probability`` overrides the config's (a curriculum)."""
    p_contrast = config.contrast_probability if contrast_probability is None else contrast_probability
    fixed, moving, grids, targets, weights = [], [], [], [], []
    shifted_grids, shifted_targets = [], []
    border = 8
    for _ in range(batch):
        item = images[int(torch.randint(len(images), (1,), generator=g))]
        index = int(torch.randint(len(item.levels), (1,), generator=g))
        rendering = (item.renderings[int(torch.randint(len(item.renderings), (1,), generator=g))][index]
                     if item.renderings and config.render_probability > 0 else None)
        crops = crop_alike(_slice([item.levels[index]] + ([rendering] if rendering is not None else []), dim, g),
                           config.crop, g)
        a = crops[0]
        b = a.clone()
        if float(torch.rand(1, generator=g)) < p_contrast:
            if rendering is not None and float(torch.rand(1, generator=g)) < config.render_probability:
                b = random_contrast(crops[1], g)
            else:
                b = random_contrast(a, g)
            if config.outline_probability > 0 and float(torch.rand(1, generator=g)) < config.outline_probability:
                width = 1 + int(torch.randint(max(1, config.max_outline_voxels), (1,), generator=g))
                band = outline_band(a, width)
                b = b * (1 - band) + random_contrast(a, g) * band
            if float(torch.rand(1, generator=g)) < 0.3:
                a = random_contrast(a, g)
        pair = []
        smooth = (int(torch.randint(2, (1,), generator=g))
                  if config.blur_probability > 0 and float(torch.rand(1, generator=g)) < config.blur_probability
                  else -1)
        for i, x in enumerate((a, b)):
            if i == smooth:
                x = blurred(x, g, config.max_blur_voxels)
            gamma = float(torch.exp((torch.rand(1, generator=g) - 0.5) * 0.7))
            x = x.clamp(0, 1) ** gamma
            x = x + torch.randn(x.shape, generator=g) * float(torch.rand(1, generator=g)) * config.noise
            pair.append(x.clamp(0, 1))
        if float(torch.rand(1, generator=g)) < config.thick_slice_probability:
            pair[1] = thick_slices(pair[1], g, config.max_slice_voxels)
        if float(torch.rand(1, generator=g)) < 0.5:
            pair.reverse()
        if float(torch.rand(1, generator=g)) < config.aligned_fraction:
            amplitude = 0.0
        else:
            lo, hi = torch.log(torch.tensor(0.03)), torch.log(torch.tensor(config.max_offset_voxels))
            amplitude = float(torch.exp(lo + torch.rand(1, generator=g) * (hi - lo)))
        u = random_displacement(a.shape, amplitude, g)
        if amplitude > 0 and float(torch.rand(1, generator=g)) < 0.5:
            u = u + random_rotation(a.shape, config.max_rotation_deg, g)
        grid = sampling_grid(u)
        if config.slope_offset_voxels > 0:  # the same example read again a small translation either way
            e = torch.randn(dim, generator=g)
            length = config.slope_offset_voxels * (0.5 + 0.5 * float(torch.rand(1, generator=g)))
            e = (e * (length / e.norm().clamp(min=1e-6))).view(dim, *([1] * dim))
            for sign in (1.0, -1.0):
                shifted_grids.append(sampling_grid(u + sign * e))
                shifted_targets.append(target_score(u + sign * e, config.scale_voxels))
        seen = F.grid_sample(pair[1][None, None], grid, align_corners=True)[0]
        content = ((pair[0][None] > 0.02) | (seen > 0.02)).float()
        inside = torch.ones_like(content)
        for axis, n in enumerate(a.shape):
            index = torch.arange(n, dtype=torch.float32).view(*([1] * axis), n, *([1] * (dim - axis - 1)))
            moved = index + u[axis]
            inside = inside * ((index >= border) & (index <= n - 1 - border)
                               & (moved >= border) & (moved <= n - 1 - border)).float()
        fixed.append(pair[0][None])
        moving.append(pair[1][None])
        grids.append(grid)
        targets.append(target_score(u, config.scale_voxels))
        weights.append(content * inside)
    batch = {"fixed": torch.stack(fixed), "moving": torch.stack(moving), "grid": torch.cat(grids),
             "target": torch.stack(targets), "weight": torch.stack(weights)}
    if shifted_grids:  # (B, 2, ...): the readings at u + e and u - e of each example
        batch["shifted_grid"] = torch.cat(shifted_grids).reshape(batch["grid"].shape[0], 2, *batch["grid"].shape[1:])
        batch["shifted_target"] = torch.stack(shifted_targets).reshape(batch["grid"].shape[0], 2,
                                                                       *batch["target"].shape[1:])
    return batch
