"""A keypoint network for fundus images (SuperPoint-style): one shared encoder, a detector head and a descriptor
head, trained self-supervised (:mod:`.keypoint_training`).

``(N, 1, H, W)`` image in [0, 1] (the CLAHE-enhanced green channel, H and W multiples of 8) -> the encoder at 1/8
resolution -> (a) 65 logits per 8x8 cell: which of its 64 pixels holds a keypoint, or none (the "dustbin"); their
softmax, dustbin dropped and rearranged to full resolution, is the keypoint heatmap; (b) an L2-normalised descriptor
per cell, sampled bilinearly at a keypoint.

:func:`detect_learned` turns a working image into :class:`~.keypoints.Features` (float descriptors, matched by
Euclidean distance): the keypoint stage's ``detector: learned``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .correlation_net import conv_block

__all__ = ["KeypointNet", "heatmap", "sample_descriptors", "detect_learned"]


class KeypointNet(nn.Module):
    """See the module docstring; ``config`` holds the constructor arguments (what a model card records)."""

    def __init__(self, descriptor: int = 64, channels: tuple = (16, 32, 64, 64)) -> None:
        super().__init__()
        self.config = {"descriptor": descriptor, "channels": list(channels)}
        c1, c2, c3, c4 = channels
        self.encoder = nn.Sequential(conv_block(1, c1), conv_block(c1, c1), conv_block(c1, c2, 2), conv_block(c2, c2),
                                     conv_block(c2, c3, 2), conv_block(c3, c3), conv_block(c3, c4, 2),
                                     conv_block(c4, c4))
        self.detector = nn.Sequential(conv_block(c4, c4), nn.Conv2d(c4, 65, 1))
        self.descriptor = nn.Sequential(conv_block(c4, c4), nn.Conv2d(c4, descriptor, 1))
        self.logit_scale = nn.Parameter(torch.tensor(3.0))  # the descriptors' matching temperature in training

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detector logits ``(N, 65, H/8, W/8)`` and normalised descriptors ``(N, D, H/8, W/8)``."""
        features = self.encoder(image)
        return self.detector(features), nn.functional.normalize(self.descriptor(features), dim=1)


def heatmap(logits: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` keypoint probability from the detector's cell logits (softmax, dustbin dropped)."""
    return nn.functional.pixel_shuffle(torch.softmax(logits, 1)[:, :64], 8)


def sample_descriptors(descriptors: torch.Tensor, points: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Descriptors ``(P, D)`` of one image (``(1, D, h, w)`` cells) at pixel points ``(P, 2)`` ``(x, y)`` of an
    image of ``shape`` (H, W); cell ``c`` covers pixels ``8c .. 8c + 7``."""
    h, w = shape
    grid = torch.stack([(points[:, 0] + 0.5) / w * 2 - 1, (points[:, 1] + 0.5) / h * 2 - 1], -1)
    out = nn.functional.grid_sample(descriptors, grid[None, None].to(descriptors), align_corners=False)
    return nn.functional.normalize(out[0, :, 0].T, dim=1)


@torch.no_grad()
def detect_learned(net: KeypointNet, u8: np.ndarray, mask: np.ndarray, max_keypoints: int = 2000,
                   threshold: float = 0.005, nms_px: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``(P, 2)`` (working pixels ``(x, y)``) of a uint8 working image inside ``mask`` and their
    descriptors ``(P, D)`` (float32): heatmap peaks (non-maximum suppression within ``nms_px``) above
    ``threshold``, the strongest ``max_keypoints``, each refined to the centroid of the heatmap around it."""
    h, w = u8.shape
    x = np.pad(u8.astype(np.float32) / 255.0, ((0, -h % 8), (0, -w % 8)))
    logits, descriptors = net(torch.from_numpy(x)[None, None])
    heat = heatmap(logits)
    peaks = heat == nn.functional.max_pool2d(heat, 2 * nms_px + 1, stride=1, padding=nms_px)
    kept = torch.where(peaks, heat, torch.zeros_like(heat))[0, 0, :h, :w]
    kept[~torch.from_numpy(mask)] = 0
    values, flat = kept.flatten().topk(min(max_keypoints, kept.numel()))
    flat = flat[values > threshold]
    # sub-pixel: each peak moves to the centroid of the heatmap over its 3 x 3 neighbourhood
    patches = nn.functional.unfold(heat[..., :h, :w], 3, padding=1)[0]  # (9, h * w)
    weights = patches[:, flat]
    offsets = torch.tensor([-1.0, 0.0, 1.0])
    dy, dx = offsets.repeat_interleave(3)[:, None], offsets.repeat(3)[:, None]
    total = weights.sum(0).clamp(min=1e-12)
    points = torch.stack([flat % w + (weights * dx).sum(0) / total, flat // w + (weights * dy).sum(0) / total], -1)
    points = points.double()
    return points.numpy(), sample_descriptors(descriptors, points, x.shape).float().numpy()
