"""On-the-fly training data: random spatial deformations, intensity augmentation and SynthMorph-style synthesis.

Everything works on tensors of one model grid in voxel units (``(1, *shape)``, tensor axis order) and draws
its randomness from the caller's (CPU) ``torch.Generator``, so a training run is reproducible and resumes exactly.
The random numbers are drawn on the CPU and the full-size work runs on the images' device (CUDA when training
there).

* **Spatial**: a small random affine (rotation, per-axis scaling, translation) plus a smooth random
  diffeomorphism (a Gaussian velocity drawn on a coarse control grid, upsampled and integrated by scaling
  and squaring), applied to the image (trilinear) and its label map (nearest) alike.
* **Intensity** (real images): a smooth multiplicative bias field, a gamma change and Gaussian noise.
* **Synthesis** (Hoffmann et al., SynthMorph, IEEE TMI 2022): the image is drawn from the label map alone:
  each label gets a random mean and noise level, the result is blurred, then bias, gamma and noise as
  above. A model trained on such images learns anatomy rather than one scanner's contrast.
* **Contrast remapping** (real images): the image is passed through a random non-monotonic intensity curve
  (:func:`random_contrast`: piecewise linear through random heights at evenly spaced intensities, 0 kept at 0
  so the background stays dark), which changes the contrast between tissues while keeping the real image's
  texture and partial volumes, the complement of synthesis for a contrast-agnostic model.

Every augmented image comes with its *reference*: the real image under the same deformation, before synthesis,
remapping and intensity augmentation. Whatever contrast the network is shown, the reference has the geometry of
what it is shown and the contrast of the real images, so an image similarity between the references of a pair
measures the network's alignment of a pair of any contrasts (contrast-agnostic training with a dense signal).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ...intensity import contrast_curve, render_labels
from ...transforms.linear import rotation_matrix
from ...transforms.voxel import integrate_voxel_velocity, warp_voxels

__all__ = ["AugmentConfig", "Augmented", "random_displacement", "random_contrast", "augment_subject"]


@dataclass
class AugmentConfig:
    """Strength of the augmentation (all in physical units of the model grid).

    Attributes:
        deformation_mm: standard deviation of the random velocity at each control point (mm).
        control_spacing_mm: spacing of the control grid of that velocity (mm): the deformation's smoothness.
        rotation_deg, scaling, translation_mm: ranges (uniform, +-) of the random affine part.
        synth_probability: probability that a training image is synthesised from its label map.
        remap_probability: probability that a real (not synthesised) training image goes through a random
            non-monotonic intensity curve (:func:`random_contrast`).
        remap_knots: nodes of that curve over [0, 1] (its first node stays at 0).
        known_pair_probability: probability that a pair is one subject and a random deformation of it, whose
            displacement is then known exactly (the training adds a supervised term for such pairs).
        bias: standard deviation of the log bias field (smooth, ~4 control points per axis).
        gamma: standard deviation of the log gamma exponent.
        noise: maximum standard deviation of the added Gaussian noise (intensities in [0, 1]).
    """

    deformation_mm: float = 2.0
    control_spacing_mm: float = 24.0
    rotation_deg: float = 4.0
    scaling: float = 0.04
    translation_mm: float = 4.0
    synth_probability: float = 0.0
    remap_probability: float = 0.0
    remap_knots: int = 6
    known_pair_probability: float = 0.0
    bias: float = 0.2
    gamma: float = 0.2
    noise: float = 0.03

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(gen: torch.Generator, n: int, half_range: float) -> torch.Tensor:
    return (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * half_range


def _smooth_noise(gen: torch.Generator, shape: tuple[int, ...], control: tuple[int, ...], channels: int,
                  std: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian noise of ``std`` on a ``control`` grid, upsampled (linear) to ``shape``: ``(1, channels, *shape)``."""
    coarse = (torch.randn(1, channels, *control, generator=gen) * std).to(device)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return F.interpolate(coarse, size=shape, mode=mode, align_corners=True)


def random_displacement(shape: tuple[int, ...], spacing_mm: float, config: AugmentConfig,
                        gen: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """A random smooth displacement ``(1, dim, *shape)`` in voxels (pull-back, :mod:`~DeepRegistrationLib.transforms.voxel`
    convention): affine part about the grid centre plus the exponential of a random stationary velocity."""
    dim = len(shape)
    axes = [torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2 for n in shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (dim, *shape), tensor axis order, voxels
    angles = torch.deg2rad(_uniform(gen, 3 if dim == 3 else 1, config.rotation_deg))
    rotation = rotation_matrix(angles, dim).flip(0).flip(1)  # ITK's rotation of the index axes, in array order
    scale = torch.diag(1 + _uniform(gen, dim, config.scaling))
    translation = _uniform(gen, dim, config.translation_mm / spacing_mm)
    a = (rotation @ scale - torch.eye(dim, dtype=torch.float64)).to(device)
    affine = torch.einsum("ij,j...->i...", a, coords) + translation.to(device).reshape(dim, *([1] * dim))
    control = tuple(max(2, math.ceil(n * spacing_mm / config.control_spacing_mm) + 1) for n in shape)
    velocity = _smooth_noise(gen, shape, control, dim, config.deformation_mm / spacing_mm, device)
    smooth = integrate_voxel_velocity(velocity, 5)
    return affine.float().unsqueeze(0) + smooth


def random_contrast(image: torch.Tensor, gen: torch.Generator, knots: int = 6) -> torch.Tensor:
    """``image`` (intensities in [0, 1]) through a random piecewise-linear curve: heights drawn uniformly in
    [0, 1] at ``knots`` evenly spaced intensities, the first fixed at 0 (background stays dark), rescaled so the
    brightest height is 1. Non-monotonic in general: tissues may swap their order, as between T1, T2 and PD."""
    if knots < 2:
        raise ValueError("a contrast curve needs at least 2 knots")
    heights = torch.rand(knots, generator=gen, dtype=torch.float32)
    heights[0] = 0.0
    return contrast_curve(image, heights / heights.max().clamp(min=1e-6))


def _intensity(image: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Bias field, gamma and noise on an image ``(1, *shape)`` in [0, 1]; the result is rescaled to [0, 1]."""
    shape = tuple(image.shape[1:])
    bias = torch.exp(_smooth_noise(gen, shape, (4,) * len(shape), 1, config.bias, image.device)[0])
    out = (image.clamp(min=0) * bias).clamp(min=0)
    out = out / out.max().clamp(min=1e-6)
    out = out ** float(torch.exp(torch.randn(1, generator=gen) * config.gamma))
    out = out + torch.randn(out.shape, generator=gen).to(out.device) * float(torch.rand(1, generator=gen)) * config.noise
    out = out.clamp(min=0)
    return out / out.max().clamp(min=1e-6)


class Augmented(NamedTuple):
    """One augmented training image (tensors on the model grid, tensor axis order).

    ``image`` ``(1, *shape)`` in [0, 1]: what the network sees; ``labels`` ``(1, *shape)`` integer or None, deformed
    alike; ``new_contrast``: True when ``image`` was synthesised from the labels or remapped by a random contrast
    curve (an image similarity between it and another image then means nothing); ``ddf`` ``(1, dim, *shape)`` in
    voxels: the deformation applied, ``out(x) = in(x + ddf(x))``; ``reference`` ``(1, *shape)``: the real image
    deformed by the same ``ddf``, with no contrast change and no intensity augmentation.
    """

    image: torch.Tensor
    labels: torch.Tensor | None
    new_contrast: bool
    ddf: torch.Tensor
    reference: torch.Tensor


def augment_subject(image: torch.Tensor, labels: torch.Tensor | None, spacing_mm: float, config: AugmentConfig,
                    gen: torch.Generator, deform: bool = True) -> Augmented:
    """A randomly deformed (and re-contrasted) copy of one subject (:class:`Augmented`).

    ``image`` ``(1, *shape)`` in [0, 1], ``labels`` ``(1, *shape)`` integer or None. Synthesis needs labels.
    With ``deform=False`` only the intensities change (``ddf`` is zero).
    """
    shape = tuple(image.shape[1:])
    ddf = random_displacement(shape, spacing_mm, config, gen, image.device) if deform \
        else image.new_zeros(1, len(shape), *shape)
    synth = labels is not None and float(torch.rand(1, generator=gen)) < config.synth_probability
    warped_labels = None
    if labels is not None:
        warped_labels = warp_voxels(labels[None].float(), ddf, "nearest")[0].round().to(labels.dtype)
    reference = warp_voxels(image[None].float(), ddf)[0]
    remap = False
    if synth:
        source = render_labels(warped_labels, gen)
    else:
        source = reference
        # drawn only when enabled, so runs without remapping keep their random streams
        remap = config.remap_probability > 0 and float(torch.rand(1, generator=gen)) < config.remap_probability
        if remap:
            source = random_contrast(source, gen, config.remap_knots)
    return Augmented(_intensity(source, config, gen), warped_labels, synth or remap, ddf, reference)
