"""Image similarity terms as differentiable torch losses (lower is better).

Every loss is an ``nn.Module`` called as ``loss(fixed, moving, mask=None)`` with tensors
``(N, C, [D,] H, W)`` on the same grid (``moving`` is usually the warped moving image) and an
optional ``mask`` ``(N, 1, ...)`` whose non-zero voxels restrict the measure. They work in 2D and 3D.

* :class:`MSELoss` (SSD): mean squared difference; optimum 0.
* :class:`NCCLoss`: ``-NCC`` over the (masked) image; optimum -1.
* :class:`LNCCLoss`: ``-mean(local NCC^2)`` in a box window (VoxelMorph/MONAI definition); optimum -1.
* :class:`MappedLNCCLoss`: LNCC against the moving image mapped into the fixed image's contrast by the
  conditional mean E[fixed | moving] (the SVF stage maps it once, before its levels; multimodal, with LNCC's
  local precision); optimum -1.
* :class:`MutualInformationLoss`: ``-MI`` or ``-NMI`` from a Parzen-window joint histogram (cubic
  B-spline or Gaussian kernel). Each image is min-max normalised over the mask first, so the result
  does not depend on the intensity range (unlike MONAI 1.6.1's ``GlobalMutualInformationLoss``,
  which assumes [0, 1]) and a constant image gives MI = 0, not NaN.
* :class:`MINDSSCLoss`: mean squared difference of MIND-SSC descriptors (Heinrich et al. 2013),
  invariant to intensity inversion and robust across modalities; optimum 0.
* ``learned:<model>``: a trained network's misalignment score (:mod:`.learned`); it compares feature maps,
  which the optimisers make first; optimum 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..intensity import ConditionalMean

__all__ = ["MSELoss", "NCCLoss", "LNCCLoss", "MappedLNCCLoss", "MutualInformationLoss", "MINDSSCLoss", "mind_ssc",
           "box_filter", "make_similarity", "similarity_names", "SIMILARITIES"]


def _check(fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    if fixed.shape != moving.shape:
        raise InputError(f"fixed and moving tensors differ in shape: {tuple(fixed.shape)} vs {tuple(moving.shape)}")
    if fixed.dim() not in (4, 5):
        raise InputError(f"similarity expects (N, C, [D,] H, W) tensors, got {fixed.dim()} dimensions")
    if mask is None:
        return None
    if mask.shape[0] != fixed.shape[0] or mask.shape[2:] != fixed.shape[2:]:
        raise InputError(f"mask of shape {tuple(mask.shape)} does not match images of shape {tuple(fixed.shape)}")
    mask = (mask != 0).to(fixed.dtype)
    if float(mask.sum()) == 0:
        raise InputError("the similarity mask is empty (no non-zero voxel)")
    return mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    m = mask.expand_as(values)
    return (values * m).sum() / m.sum()


def _window_sums(x: torch.Tensor, axis_dim: int, k: int) -> torch.Tensor:
    """Sum over a window of ``k`` (odd) voxels along tensor axis ``axis_dim``, zero beyond the borders (running sums)."""
    n, r = x.shape[axis_dim], k // 2
    pad = [0, 0] * (x.dim() - axis_dim - 1) + [r + 1, r]
    c = torch.cumsum(F.pad(x, pad), dim=axis_dim)
    return c.narrow(axis_dim, k, n) - c.narrow(axis_dim, 0, n)


def _window_counts(x: torch.Tensor, axis_dim: int, k: int) -> torch.Tensor:
    """How many voxels of each window lie inside the image, shaped to broadcast along ``axis_dim``."""
    n, r = x.shape[axis_dim], k // 2
    idx = torch.arange(n, device=x.device)
    count = (torch.clamp(idx + r, max=n - 1) - torch.clamp(idx - r, min=0) + 1).to(x.dtype)
    return count.view(*([1] * axis_dim), n, *([1] * (x.dim() - axis_dim - 1)))


class _BoxFilter(torch.autograd.Function):
    """The box mean as a linear map ``B = prod_axes D^-1 S`` (``S`` the zero-padded window sum, symmetric; ``D`` the
    counts of voxels inside each window), with its exact adjoint ``B^T g = prod_axes S D^-1 g`` (axes in reverse) as
    the backward pass: one running sum per axis, where autograd through ``cumsum``, ``narrow`` and ``pad`` made
    flipped copies and zero-filled gradients (LNCC forward + backward at 2 million voxels: 119 -> 80 ms)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        ctx.size = size
        out = x
        for axis, k in enumerate(size):
            if k > 1:
                out = _window_sums(out, axis + 2, k) / _window_counts(out, axis + 2, k)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad
        for axis in reversed(range(len(ctx.size))):
            k = ctx.size[axis]
            if k > 1:
                out = _window_sums(out / _window_counts(out, axis + 2, k), axis + 2, k)
        return out, None


def box_filter(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Local mean in a box of ``size`` voxels (odd, per spatial axis in array order); borders use only inside voxels.

    Separable running sums (cumulative sums), so the cost does not depend on the window size; the backward pass is
    the operator's adjoint, computed the same way.
    """
    return _BoxFilter.apply(x, tuple(int(k) for k in size))


class MSELoss(nn.Module):
    """Mean squared intensity difference (SSD / number of voxels)."""

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check(fixed, moving, mask)
        return _masked_mean((fixed - moving) ** 2, mask)


class NCCLoss(nn.Module):
    """Negative global normalised cross-correlation (Pearson), per sample and channel, averaged."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check(fixed, moving, mask)
        dims = tuple(range(2, fixed.dim()))
        w = torch.ones_like(fixed) if mask is None else mask.expand_as(fixed)
        n = w.sum(dims, keepdim=True)
        f = fixed - (fixed * w).sum(dims, keepdim=True) / n
        m = moving - (moving * w).sum(dims, keepdim=True) / n
        cov = (f * m * w).sum(dims)
        var = ((f * f * w).sum(dims) * (m * m * w).sum(dims)).clamp(min=self.eps)
        return -(cov / var.sqrt()).mean()


class LNCCLoss(nn.Module):
    """Negative local squared NCC in a box window of ``window`` voxels (odd; int or per array axis).

    Same definition as VoxelMorph and MONAI's ``LocalNormalizedCrossCorrelationLoss`` (rectangular
    kernel): ``cc = cov^2 / (var_f var_m + 1e-5)`` per voxel with cov and var as window *sums*,
    averaged (over ``mask`` when given).
    Windows at the image border use only the voxels inside the image.

    Optimisers call it many times with the same ``fixed`` tensor: its local mean and variance are kept
    for the last ``fixed`` object seen (while unchanged and not requiring a gradient), so a call
    costs 3 box filters instead of 5.
    """

    def __init__(self, window: int | Sequence[int] = 9, eps: float = 1e-5) -> None:
        super().__init__()
        self.window = window
        self.eps = eps
        self._fixed_stats: tuple | None = None  # (fixed tensor, its version, size, mean, variance)

    def _window(self, dim: int) -> list[int]:
        size = [self.window] * dim if isinstance(self.window, int) else list(self.window)
        if len(size) != dim or any(s < 1 or s % 2 == 0 for s in size):
            raise InputError(f"LNCC window must be odd and positive per axis, got {self.window}")
        return size

    def _fixed_mean_var(self, fixed: torch.Tensor, size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._fixed_stats
        if cached is not None and cached[0] is fixed and cached[1] == fixed._version and cached[2] == size:
            return cached[3], cached[4]
        mean = box_filter(fixed, size)
        var = (box_filter(fixed * fixed, size) - mean * mean).clamp(min=0)
        self._fixed_stats = None if fixed.requires_grad else (fixed, fixed._version, size, mean, var)
        return mean, var

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check(fixed, moving, mask)
        size = self._window(fixed.dim() - 2)
        mf, var_f = self._fixed_mean_var(fixed, size)
        mm = box_filter(moving, size)
        var_m = (box_filter(moving * moving, size) - mm * mm).clamp(min=0)
        cov = box_filter(fixed * moving, size) - mf * mm
        # VoxelMorph/MONAI add eps to products of window *sums* (V x the means): eps / V^2 on means.
        volume = float(torch.tensor(size, dtype=torch.float64).prod())
        cc = cov * cov / (var_f * var_m + self.eps / volume**2)
        return -_masked_mean(cc, mask)


class MappedLNCCLoss(LNCCLoss):
    """LNCC against a moving image that the stage has mapped into the fixed contrast (multimodal).

    The comparison is :class:`LNCCLoss`'s; what differs is the moving image it is given. A stage using this
    similarity (``maps_intensities``) first maps the *unsmoothed* moving image into the fixed image's intensities
    by the conditional mean ``E[fixed | moving]`` through the stage's starting transform (:meth:`fit_mapping`,
    :class:`~DeepRegistrationLib.intensity.ConditionalMean`,
    :func:`~DeepRegistrationLib.methods.pyramid.mapped_image`), then smooths and resamples the mapped image
    as each level's moving image. This keeps LNCC's local precision between contrasts whose intensities are a
    function of each other within tissue (T1 against PD or T2; CT against MR less so: bone and air share MR
    intensities). Optimum -1.

    Measured choices (OASIS T1 against a PD rendering of another subject, after the affine stages; Dice over 35
    labels; SVF regularisation 0.05): mapping the smoothed level images instead of the unsmoothed image maps
    partial-volume mixtures of a non-monotonic contrast to wrong tissues (0.51 instead of 0.76); mapping again
    after each level lets the mapping follow the deformation's errors (0.733); re-estimating it at every step
    from the warped level gained 0.003 in 3D and lost 0.05 on 2D slices (it co-adapts with the deformation on
    small images).

    Args:
        window: LNCC window (voxels, odd).
        bins: moving-intensity bins of the mapping.
        smoothing_bins: Gaussian smoothing of the joint histogram across bins.
    """

    maps_intensities = True

    def __init__(self, window: int | Sequence[int] = 9, bins: int = 64, smoothing_bins: float = 1.0,
                 eps: float = 1e-5) -> None:
        super().__init__(window, eps)
        if bins < 4:
            raise InputError(f"the intensity mapping needs at least 4 bins, got {bins}")
        if not smoothing_bins >= 0:
            raise InputError(f"smoothing_bins must be >= 0, got {smoothing_bins}")
        self.bins, self.smoothing_bins = int(bins), float(smoothing_bins)

    def fit_mapping(self, fixed_values: torch.Tensor, moving_values: torch.Tensor,
                    weight: torch.Tensor | None = None) -> ConditionalMean:
        """The mapping of moving intensities into the fixed contrast, from corresponding voxel values (1D)."""
        return ConditionalMean.fit(fixed_values, moving_values, weight, self.bins, self.smoothing_bins)


class MutualInformationLoss(nn.Module):
    """Negative (normalised) mutual information from a Parzen-window joint histogram.

    Args:
        bins: histogram bins per image.
        kernel: ``"bspline"`` (cubic B-spline Parzen window, as Mattes et al.) or ``"gaussian"``.
        normalised: return ``-NMI = -(H(F) + H(M)) / H(F, M)`` (Studholme) instead of ``-MI``.
        max_samples: use at most this many voxels (a fixed, seeded random subset) per sample.
        seed: seed of that subset (determinism).
    """

    def __init__(self, bins: int = 32, kernel: str = "bspline", normalised: bool = False,
                 max_samples: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if kernel not in ("bspline", "gaussian"):
            raise InputError(f"MI kernel must be 'bspline' or 'gaussian', got {kernel!r}")
        if bins < 8:
            raise InputError(f"MI needs at least 8 bins, got {bins}")
        self.bins, self.kernel, self.normalised = bins, kernel, normalised
        self.max_samples, self.seed = max_samples, seed

    def _unit(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Intensities ``x`` ``(P,)`` mapped to [0, 1] over the range where the weights ``w`` are positive."""
        sel = x[w > 0]
        lo, hi = sel.min().detach(), sel.max().detach()
        return ((x - lo) / (hi - lo).clamp(min=1e-12)).clamp(0.0, 1.0)

    def _weights(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Dense Gaussian Parzen weights ``(P, bins)`` of intensities ``x`` ``(P,)``."""
        centres = torch.arange(self.bins, dtype=x.dtype, device=x.device)
        t = self._unit(x, w) * (self.bins - 1)
        g = torch.exp(-0.5 * ((t.unsqueeze(1) - centres) / 0.5) ** 2)
        return g / g.sum(1, keepdim=True)

    def _bspline(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cubic B-spline Parzen weights as the 4 bins each intensity touches: ``(P, 4)`` bin indices and weights.
        Two bins of padding each side keep the partition of unity; only the 4 non-zero weights are kept, so the
        joint histogram costs 16 values a sample, not ``bins^2`` (scatter-add, below)."""
        t = self._unit(x, w) * (self.bins - 5) + 2.0
        first = torch.floor(t.detach()).long() - 1  # bins first .. first + 3
        offsets = torch.arange(4, device=x.device)
        d = (t.unsqueeze(1) - (first.unsqueeze(1) + offsets).to(t.dtype)).abs()  # |t - bin| in [0, 2]
        weights = torch.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6, (2 - d).clamp(min=0) ** 3 / 6)
        return first.unsqueeze(1) + offsets, weights

    def _joint(self, f: torch.Tensor, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Joint histogram ``(bins, bins)`` of the weighted samples (sums to 1)."""
        if self.kernel == "bspline":
            (fi, fw), (mi, mw) = self._bspline(f, w), self._bspline(m, w)
            index = (fi.unsqueeze(2) * self.bins + mi.unsqueeze(1)).reshape(-1)
            values = (fw.unsqueeze(2) * mw.unsqueeze(1) * w.view(-1, 1, 1)).reshape(-1)
            joint = torch.zeros(self.bins * self.bins, dtype=values.dtype, device=values.device)
            joint = joint.index_add(0, index, values).reshape(self.bins, self.bins)
        else:
            joint = (self._weights(f, w) * w.unsqueeze(1)).T @ self._weights(m, w)
        return joint / joint.sum()

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check(fixed, moving, mask)
        losses = []
        for n in range(fixed.shape[0]):
            for c in range(fixed.shape[1]):
                f = fixed[n, c].reshape(-1)
                m = moving[n, c].reshape(-1)
                w = torch.ones_like(f) if mask is None else mask[n, 0].reshape(-1)
                if self.max_samples is not None and f.numel() > self.max_samples:
                    gen = torch.Generator().manual_seed(self.seed)
                    idx = torch.randperm(f.numel(), generator=gen)[: self.max_samples].to(f.device)
                    f, m, w = f[idx], m[idx], w[idx]
                if float(w.sum()) == 0:
                    raise InputError("no masked voxel left for mutual information")
                joint = self._joint(f, m, w)
                pf, pm = joint.sum(1), joint.sum(0)
                eps = 1e-10
                h_f = -(pf * torch.log(pf + eps)).sum()
                h_m = -(pm * torch.log(pm + eps)).sum()
                h_fm = -(joint * torch.log(joint + eps)).sum()
                if self.normalised:
                    losses.append(-(h_f + h_m) / h_fm.clamp(min=eps))
                else:
                    losses.append(-(h_f + h_m - h_fm))
        return torch.stack(losses).mean()


def _shift(padded: torch.Tensor, offset: Sequence[int], pad: int, shape: Sequence[int]) -> torch.Tensor:
    """View of ``image(x + offset)`` from an image padded by ``pad`` on every spatial side."""
    slices = [slice(None), slice(None)] + [slice(pad + o, pad + o + n) for o, n in zip(offset, shape)]
    return padded[tuple(slices)]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors of ``image`` ``(N, 1, [D,] H, W)``: ``(N, 12, ...)`` in 3D, ``(N, 4, ...)`` in 2D.

    For every pair of the 2*dim axis neighbours at ``dilation`` voxels that are not opposite each other
    (the self-similarity context), the patch distance is the box mean (radius ``radius``) of the squared
    difference; descriptors are ``exp(-(D - min D) / V)`` with ``V`` the mean over channels, clamped to
    [1e-3, 1e3] times its global mean (Heinrich et al., MICCAI 2013; as in the Learn2Reg baselines).
    """
    if image.dim() not in (4, 5) or image.shape[1] != 1:
        raise InputError(f"MIND-SSC expects (N, 1, [D,] H, W), got {tuple(image.shape)}")
    dim = image.dim() - 2
    shape = image.shape[2:]
    neighbours = []
    for axis in range(dim):
        for sign in (-1, 1):
            o = [0] * dim
            o[axis] = sign * dilation
            neighbours.append(o)
    pairs = [(p, q) for i, p in enumerate(neighbours) for q in neighbours[i + 1:]
             if sum((a - b) ** 2 for a, b in zip(p, q)) == 2 * dilation**2]
    padded = F.pad(image, [dilation] * (2 * dim), mode="replicate")
    size = [2 * radius + 1] * dim
    dists = torch.cat([box_filter((_shift(padded, p, dilation, shape) - _shift(padded, q, dilation, shape)) ** 2, size)
                       for p, q in pairs], dim=1)
    dists = dists - dists.min(dim=1, keepdim=True).values
    var = dists.mean(dim=1, keepdim=True)
    mean_var = var.mean().detach()
    var = var.clamp(min=float(mean_var) * 1e-3 + 1e-12, max=float(mean_var) * 1e3 + 1e-12)
    return torch.exp(-dists / var)


class MINDSSCLoss(nn.Module):
    """Mean squared difference of MIND-SSC descriptors (multimodal); optimum 0.

    Optimisers call it many times with the same ``fixed`` tensor: its descriptors are kept for the last
    ``fixed`` object seen (while unchanged and not requiring a gradient), so a call computes them for the
    moving image only.
    """

    def __init__(self, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        self.radius, self.dilation = radius, dilation
        self._fixed_mind: tuple | None = None  # (fixed tensor, its version, descriptors per channel)

    def _fixed_descriptors(self, fixed: torch.Tensor) -> list[torch.Tensor]:
        cached = self._fixed_mind
        if cached is not None and cached[0] is fixed and cached[1] == fixed._version:
            return cached[2]
        descriptors = [mind_ssc(fixed[:, c:c + 1], self.radius, self.dilation) for c in range(fixed.shape[1])]
        self._fixed_mind = None if fixed.requires_grad else (fixed, fixed._version, descriptors)
        return descriptors

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check(fixed, moving, mask)
        fixed_mind = self._fixed_descriptors(fixed)
        losses = [_masked_mean((fixed_mind[c] - mind_ssc(moving[:, c:c + 1], self.radius, self.dilation)) ** 2, mask)
                  for c in range(fixed.shape[1])]
        return torch.stack(losses).mean()


SIMILARITIES = {"ssd": MSELoss, "mse": MSELoss, "ncc": NCCLoss, "lncc": LNCCLoss,
                "mapped-lncc": MappedLNCCLoss, "mi": MutualInformationLoss,
                "nmi": lambda **kw: MutualInformationLoss(normalised=True, **kw), "mind": MINDSSCLoss}


def similarity_names() -> list[str]:
    """The names :func:`make_similarity` takes (``learned:<model>`` for any learned metric model)."""
    return sorted(SIMILARITIES) + ["learned:<model>"]


def make_similarity(name: str, **kwargs) -> nn.Module:
    """Similarity loss by name: ``ssd``/``mse``, ``ncc``, ``lncc``, ``mapped-lncc``, ``mi``, ``nmi``, ``mind``,
    ``learned:<model>``."""
    from .learned import PREFIX, LearnedSimilarity

    if not isinstance(name, str):
        raise InputError(f"a similarity is named by a string, got {name!r}")
    if name.lower().startswith(PREFIX):
        return LearnedSimilarity(name[len(PREFIX):], **kwargs)
    key = name.lower()
    if key not in SIMILARITIES:
        raise InputError(f"unknown similarity {name!r} (choose from {similarity_names()})")
    return SIMILARITIES[key](**kwargs)
