"""The second source document's registration loss on vessel maps: Dice + cross-entropy + reverse hinge + Chamfer.

All terms compare a fixed vessel map ``target`` with the moving vessel map warped onto it, ``warped`` (both
``(N, 1, H, W)`` probabilities in [0, 1]; ``mask`` marks the pixels the warp samples inside the moving image):

* **Dice** ``1 - 2|T.W| / (|T| + |W|)`` (soft), inside ``mask``;
* **cross-entropy** of ``warped`` against ``target`` (binary), inside ``mask``;
* **reverse hinge** ``mean(max(0, target - warped))`` over the whole fixed map: a fixed vessel that nothing
  covers costs, so shrinking the moving map or pushing it out of the window is never a way down (the document's
  remedy for the Chamfer term's collapse);
* **Chamfer** ``sum(warped * d_T) / sum(warped)``: the mean distance (in units of the map's side) from each warped
  vessel pixel to the nearest fixed vessel (``d_T``, the distance transform of ``target > 0.5``); it pulls from
  afar, where the overlap terms have no gradient.
"""

from __future__ import annotations

import numpy as np
import torch

from .vessel_training import dice

__all__ = ["vessel_registration_loss", "distance_to_vessels"]


def distance_to_vessels(target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(N, 1, H, W)`` Euclidean distance of every pixel to the nearest pixel of ``target > threshold``, divided by
    the map's longer side (a map without vessels gets 1 everywhere)."""
    import cv2

    out = np.ones(tuple(target.shape), np.float32)
    side = float(max(target.shape[-2:]))
    for k, plane in enumerate(target.detach().cpu().numpy()[:, 0]):
        binary = plane > threshold
        if binary.any():
            out[k, 0] = cv2.distanceTransform((~binary).astype(np.uint8), cv2.DIST_L2, 5) / side
    return torch.from_numpy(out).to(target.device)


def vessel_registration_loss(warped: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                             distance: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The sum of the four terms (module docstring) and each term's value (floats, for the training log)."""
    eps = 1e-4
    inside = mask.sum().clamp(min=1)
    terms = {
        "dice": 1.0 - dice(warped, target, mask),
        "cross_entropy": (torch.nn.functional.binary_cross_entropy(warped.clamp(eps, 1 - eps), target,
                                                                   reduction="none") * mask).sum() / inside,
        "reverse_hinge": torch.relu(target - warped).mean(),
        "chamfer": ((warped * (distance if distance is not None else distance_to_vessels(target))).sum((1, 2, 3))
                    / warped.sum((1, 2, 3)).clamp(min=eps)).mean(),
    }
    return sum(terms.values()), {k: round(float(v.detach()), 4) for k, v in terms.items()}
