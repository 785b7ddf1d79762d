"""The learned similarity (``similarity: "learned:<model>"`` in any iterative stage): a trained network's mean
misalignment score, lower is better (:mod:`DeepRegistrationLib.methods.learned_metric`).

Unlike the other similarities it does not compare intensities: the optimisers first turn both level images into
the network's feature maps (:meth:`LearnedSimilarity.features`, once per level, through
:meth:`~DeepRegistrationLib.methods.pyramid.PyramidLevel.with_features`), resample the moving *features* through
the transform, and call the similarity on feature tensors ``(N, C, ...)``: the score of each point, averaged over
the mask and the fixed image's *content* (:meth:`LearnedSimilarity.support`: intensity above 2 % of its range,
dilated by a quarter of the network's receptive field). Where both images are background the network has
nothing to compare, and averaging such points would reward whatever overlap of backgrounds a transform makes. The moving features are resampled like an image, so the similarity is point-wise: random voxel
sampling (``samples``) applies, and a step costs one resampling of C channels plus the network's head.

A model name ``<name>`` is a model folder of a ``LearnedMetricNet`` (bundled, ``$DEEPREG_MODELS``, or a path);
where there is no folder ``<name>``, ``<name>-2d`` or ``<name>-3d`` is taken by the images' dimension, so one
preset serves 2D and 3D.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InputError

__all__ = ["LearnedSimilarity", "learned_model_folder", "dilate_box", "PREFIX"]

PREFIX = "learned:"


def dilate_box(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``mask`` ``(N, C, [D,] H, W)`` (0/1 floats) dilated by a box of ``2 radius + 1`` voxels along each axis,
    as 0/1 floats of its dtype: the box is separable, and along each axis the dilation is the OR of the mask
    shifted by ``-radius .. radius`` voxels, on booleans (1 byte a voxel). A 1 mm head (189 x 233 x 197) by
    radius 4 on 2 cores: 40 ms, against 370 ms as three 1-D max pools (and 27x that as one 9^3 pool)."""
    out = mask > 0
    for axis in range(2, mask.dim()):
        n = out.shape[axis]
        grown = out.clone()
        for shift in range(1, min(int(radius), n - 1) + 1):
            grown.narrow(axis, shift, n - shift).logical_or_(out.narrow(axis, 0, n - shift))
            grown.narrow(axis, 0, n - shift).logical_or_(out.narrow(axis, shift, n - shift))
        out = grown
    return out.to(mask.dtype)


def learned_model_folder(name: str, dim: int | None = None):
    """The model folder of ``name`` (for ``dim`` when given: ``<name>`` or ``<name>-<dim>d``); a clear error."""
    from ..io.models import find_model

    try:
        return find_model(name)
    except InputError:
        candidates = [f"{name}-{d}d" for d in ((dim,) if dim else (2, 3))]
        for candidate in candidates:
            try:
                return find_model(candidate)
            except InputError:
                continue
        raise


def _network(name: str, dim: int, device: torch.device):
    from ..io.models import cached_model

    folder = learned_model_folder(name, dim)
    net, card = cached_model(folder, device, network="LearnedMetricNet")
    if net.dim != dim:
        raise InputError(f"learned metric {name!r} ({folder}) is a {net.dim}D network; the images are {dim}D "
                         f"(train one with 'deepreg train metric --dim {dim}')")
    return net, card


class LearnedSimilarity(nn.Module):
    """Mean misalignment score of a learned metric network over the (masked) points; 0 = aligned.

    ``refresh_every`` (a ``similarity_options`` entry): a linear stage checks every this many steps whether to
    remake the moving features from the moving image as the current transform warps it (0: never; made once
    per level from the unwarped image, which biases rotations towards 0 because the features do not rotate with
    the image); an SVF stage makes them once per level through the linear part.
    ``refresh_tolerance``: the check remakes them only when the linear part of the transform has changed since
    they were made by more than this (largest entry of ``A_made^-1 A - I``; 0.01 is about 0.6 degree).
    Translations need no remaking: the encoder is a convolution, so the features of a shifted image are the
    shifted features, which the resampling reads exactly.
    ``interpolation``: how the moving image is resampled when its features are remade through the transform:
    ``"cubic"`` (default; Keys' cubic convolution, from the unsmoothed image at a level that keeps its resolution:
    the sharp reading that took the 3D slab case from 0.18 to 0.12 mm, :meth:`PyramidLevel.warped_features`) or
    ``"linear"`` (a remake of a 1 mm head costs about half: 1.3 -> 0.6 s on 2 cores; the inter-subject OASIS
    pair, which remakes its 1 mm features six times, registers in half the time).
    ``polarities``: 1, or 2 to score the inverted images as well (``1 - fixed`` against ``1 - moving``, each
    image in [0, 1]) and average the two scores. The features then hold both images' channels, and a level and
    a step cost twice as much. Where the network localises an edge slightly towards its bright side, and the two
    contrasts are bright on opposite sides (T1 and PD at the head's outline), the two readings err in opposite
    directions, and the average cancels that part of its bias. On the BrainWeb T1 / PD cases this took the
    error from 0.110 / 0.111 to 0.059 / 0.061 px. An inversion that keeps the background dark (and so the
    outline's polarity) made it worse: 0.139 / 0.115 px. Default: the model card's ``inference.polarities``,
    else 1.

    ``features(image)`` turns a level image ``(1, 1, ...)`` into feature maps; ``forward(fixed, moving, mask)``
    takes feature tensors ``(N, C, ...)`` (the fixed features and the moving features resampled at the fixed
    points) and an optional mask ``(N, 1, ...)``.
    """

    extracts_features = True

    def __init__(self, model: str, refresh_every: int = 10, refresh_tolerance: float = 0.01,
                 polarities: int | None = None, interpolation: str = "cubic") -> None:
        super().__init__()
        if not isinstance(model, str) or not model:
            raise InputError("a learned similarity needs a model name: 'learned:<model>'")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 0:
            raise InputError(f"refresh_every must be a whole number >= 0, got {refresh_every!r}")
        if (isinstance(refresh_tolerance, bool) or not isinstance(refresh_tolerance, (int, float))
                or not refresh_tolerance >= 0 or refresh_tolerance == float("inf")):
            raise InputError(f"refresh_tolerance must be a number >= 0, got {refresh_tolerance!r}")
        if polarities is not None and (isinstance(polarities, bool) or polarities not in (1, 2)):
            raise InputError(f"polarities must be 1 or 2, got {polarities!r}")
        if interpolation not in ("cubic", "linear"):
            raise InputError(f"interpolation must be 'cubic' or 'linear', got {interpolation!r}")
        learned_model_folder(model)  # refuse a missing model when the configuration is read
        self.model = model
        self.refresh_every = refresh_every
        self.refresh_tolerance = float(refresh_tolerance)
        self.polarities = polarities
        self.interpolation = interpolation
        self._net: nn.Module | None = None
        self._card: dict = {}

    def network(self, dim: int, device: torch.device) -> nn.Module:
        net, card = _network(self.model, dim, device)
        self._net, self._card = net, card
        return net

    def readings(self) -> int:
        """How many polarities are scored (``polarities``, else the model card's, else 1); call after
        :meth:`network`."""
        if self.polarities is not None:
            return self.polarities
        value = (self._card.get("inference") or {}).get("polarities", 1)
        if isinstance(value, bool) or value not in (1, 2):
            raise InputError(f"learned metric {self.model!r}: its card's inference.polarities must be 1 or 2, "
                             f"got {value!r}")
        return int(value)

    @property
    def key(self) -> str:
        """Names the feature maps this similarity needs (levels keep them under this key)."""
        return PREFIX + self.model

    def halo(self, dim: int, device: torch.device) -> int:
        """Receptive radius of the network's features, in voxels: a feature depends on the image this far away."""
        return self.network(dim, device).receptive_field // 2

    def support(self, image: torch.Tensor) -> torch.Tensor:
        """Where the score is measured: ``image`` ``(N, 1, ...)`` (in [0, 1]) above 0.02, dilated by a quarter of
        the receptive field; ``(N, 1, ...)`` float. Refuses an image without content."""
        net = self.network(image.dim() - 2, image.device)
        content = dilate_box((image > 0.02).float(), max(1, net.receptive_field // 4))
        if not bool(content.any()):
            raise InputError("the fixed image has no content (every voxel below 2 % of its range) for a learned metric")
        return content

    def features(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() not in (4, 5) or image.shape[1] != 1:
            raise InputError(f"a learned metric takes (N, 1, [D,] H, W) images, got {tuple(image.shape)}")
        net = self.network(image.dim() - 2, image.device)
        with torch.no_grad():
            image = image.float()
            if self.readings() == 1:
                return net.features(image)
            return torch.cat([net.features(image), net.features(1 - image)], dim=1)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        from .similarity import _check, _masked_mean

        mask = _check(fixed, moving, mask)
        if self._net is None:
            raise InputError("the learned similarity compares feature maps: call features() on both images first")
        if self.readings() == 1:
            return _masked_mean(self._net.score(fixed, moving), mask)
        c = fixed.shape[1] // 2
        direct = _masked_mean(self._net.score(fixed[:, :c], moving[:, :c]), mask)
        inverted = _masked_mean(self._net.score(fixed[:, c:], moving[:, c:]), mask)
        return 0.5 * (direct + inverted)
