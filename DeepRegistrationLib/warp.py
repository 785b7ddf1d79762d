"""Warp images through a resampling transform onto a reference grid.

``warped(x) = moving(T(x))`` for every voxel centre ``x`` of the reference grid (``T``: fixed -> moving,
LPS mm). Points that land outside the moving image (continuous index outside ``[-0.5, size - 0.5)``)
get ``default_value``; inside, the border voxels are clamped. This is exactly what
``SimpleITK.Resample`` does, so both give the same image.

Interpolation:
* ``linear``: (bi/tri)linear, float32 output.
* ``nearest``: nearest voxel, dtype kept.
* ``label``: label-aware: each label's indicator is interpolated linearly and every voxel takes the
  label with the largest value (smoother boundaries than nearest, no invented labels).
"""

from __future__ import annotations

import torch

from .errors import InputError
from .geometry import Grid
from .image import Image
from .sampling import sample
from .transforms.base import Transform
from .transforms.dense import DisplacementField

__all__ = ["warp_image", "warp_in_own_type", "INTERPOLATIONS"]

INTERPOLATIONS = ("linear", "nearest", "label")


def _reference_grid(reference: Image | Grid) -> Grid:
    return reference.grid if isinstance(reference, Image) else reference


def warp_image(
    moving: Image,
    transform: Transform | None,
    reference: Image | Grid,
    interpolation: str = "linear",
    default_value: float = 0.0,
    chunk_voxels: int = 1 << 21,
) -> Image:
    """Resample ``moving`` through ``transform`` (``None`` = identity) onto ``reference``'s grid.

    Work is done in chunks of about ``chunk_voxels`` output voxels, so memory stays bounded for
    large volumes. Returns a new image; ``moving`` is not modified.
    """
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    grid = _reference_grid(reference)
    if moving.dim != grid.dim:
        raise InputError(f"{moving.name} is {moving.dim}D but the reference grid is {grid.dim}D")
    if transform is not None and transform.dim != grid.dim:
        raise InputError(f"a {transform.dim}D transform cannot warp {grid.dim}D images")

    if transform is None and moving.grid.same_as(grid, atol=1e-9):
        return Image(moving.data.clone(), grid, name=moving.name)

    if interpolation == "label" and moving.num_channels != 1:
        raise InputError(f"{moving.name}: label interpolation needs a single-channel label map")
    source = moving.data.float().unsqueeze(0) if interpolation != "nearest" or moving.data.is_floating_point() \
        else moving.data.double().unsqueeze(0)

    if interpolation == "label":  # about 350 bytes of work per voxel (2^dim corners): smaller chunks
        chunk_voxels = max(1, chunk_voxels // 4)
    rows = max(1, chunk_voxels // max(1, grid.num_voxels // grid.shape[0]))
    on_grid = transform.field.detach() if isinstance(transform, DisplacementField) \
        and transform.grid.same_as(grid, atol=1e-9) else None
    out_chunks = []
    with torch.no_grad():
        for start in range(0, grid.shape[0], rows):
            x = grid.physical_points(dtype=torch.float64, slices=slice(start, start + rows), device=source.device)
            if on_grid is not None:  # a field sampled on this very grid: its vectors, no interpolation
                y = x + on_grid[:, start:start + rows].movedim(0, -1).to(device=x.device, dtype=x.dtype)
            else:
                y = transform.map_points(x) if transform is not None else x
            if interpolation == "label":
                values = _label_sample(source, moving.grid, y, default_value)
            else:
                mode = "nearest" if interpolation == "nearest" else "bilinear"
                values = sample(source[0], moving.grid, y, mode=mode, default_value=default_value)
            out_chunks.append(values)
    data = torch.cat(out_chunks, dim=1)
    if interpolation != "linear" and not moving.data.is_floating_point():
        data = data.round().to(moving.data.dtype)
    elif interpolation == "nearest":
        data = data.to(moving.data.dtype)
    return Image(data, grid, name=f"{moving.name} (warped)")


def _label_sample(source: torch.Tensor, grid: Grid, points: torch.Tensor, default_value: float) -> torch.Tensor:
    """Label-aware interpolation: the label whose linearly interpolated indicator is largest.

    Equivalent to interpolating every label's indicator and taking the argmax, in one pass: only labels
    of the 2^dim corner voxels can win, and a corner's label scores the summed weights of the corners
    that share it (border voxels clamped, as for linear interpolation; outside the image: default).
    """
    dim = grid.dim
    lead = points.shape[:-1]
    index = grid.physical_to_index(points.reshape(-1, dim).double())
    inside = grid.inside(index)
    size = torch.as_tensor(grid.size, dtype=torch.float64)
    index = torch.minimum(torch.maximum(index, torch.zeros_like(index)), size - 1)
    base = torch.floor(index).clamp(max=(size - 2).clamp(min=0))
    frac = index - base
    base = base.long()
    volume = source[0, 0].reshape(-1)
    strides = [1]
    for n in grid.size[:-1]:
        strides.append(strides[-1] * n)  # flat index = i + j*nx + k*nx*ny
    # per axis: the flat-index term and the weight of its lower (0) and upper (1) neighbour
    terms = [(base[:, a] * strides[a], (base[:, a] + 1).clamp(max=grid.size[a] - 1) * strides[a]) for a in range(dim)]
    weights = [(1 - frac[:, a], frac[:, a]) for a in range(dim)]
    n = 2 ** dim
    lab = torch.empty((index.shape[0], n), dtype=volume.dtype)  # (P, 2^dim)
    wts = torch.empty((index.shape[0], n), dtype=torch.float64)
    for corner in range(n):
        offs = [(corner >> a) & 1 for a in range(dim)]
        flat = terms[0][offs[0]] + terms[1][offs[1]]
        weight = weights[0][offs[0]] * weights[1][offs[1]]
        for a in range(2, dim):
            flat = flat + terms[a][offs[a]]
            weight = weight * weights[a][offs[a]]
        lab[:, corner] = volume[flat]
        wts[:, corner] = weight
    best = lab[:, 0].clone()
    mixed = torch.nonzero((lab != lab[:, :1]).any(1))[:, 0]  # only points among several labels need a vote
    if mixed.numel():
        lab_m, wts_m = lab[mixed], wts[mixed]
        score = torch.zeros_like(wts_m)  # (M, 2^dim): summed weight of the corners sharing each corner's label
        for other in range(lab_m.shape[1]):
            score += (lab_m == lab_m[:, other: other + 1]) * wts_m[:, other: other + 1]
        best[mixed] = lab_m.gather(1, score.argmax(1, keepdim=True))[:, 0]
    best = torch.where(inside, best, torch.as_tensor(default_value, dtype=best.dtype))
    return best.reshape(1, *lead)


def warp_in_own_type(moving: Image, transform: Transform | None, reference: Image | Grid,
                     interpolation: str = "linear", upper: float | None = None) -> Image:
    """:func:`warp_image`, and an integer image (a photograph) back in its own type: rounded and clipped to the
    type's range (and to ``[0, upper]`` when ``upper`` is given, e.g. 65535 for a PNG); a float image as it is."""
    warped = warp_image(moving.float() if interpolation == "linear" else moving, transform, reference, interpolation)
    if moving.data.is_floating_point():
        return warped
    info = torch.iinfo(moving.data.dtype)
    low, high = (info.min, info.max) if upper is None else (max(info.min, 0), min(info.max, upper))
    return warped.with_data(warped.data.round().clamp(low, high).to(moving.data.dtype))
