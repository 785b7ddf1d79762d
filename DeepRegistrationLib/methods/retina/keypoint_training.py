"""Training the keypoint network (:mod:`.keypoint_net`) self-supervised: no annotated keypoint.

**Pseudo-labels by homographic adaptation** (SuperPoint's idea): each training image (the CLAHE-enhanced green
channel at its working size) is seen through ``adaptation_warps`` random homographies (the first one the identity);
SIFT detects keypoints in each view; mapped back and counted, the points found again in at least
``adaptation_share`` of the views (within a pixel, non-maximum suppressed over 7x7 pixels) are the labels: the
repeatable structure of the retina (vessel junctions, crossings, bends), not the texture a single detection picks.
(SuperPoint's base detector is a network trained on synthetic shapes; here it is SIFT, say so on the card.)

**Pairs** are windows of the images seen through random homographies (:func:`.correlation_training.synthetic_pair`,
photometric changes only), the labels mapped into both views.

**Loss.** The detector's 65-way cross-entropy per 8x8 cell (the labelled pixel, or the dustbin) on both views, plus
``descriptor_weight`` x the dual-softmax cross-entropy of the cell descriptors at the true correspondences (the
correlation network's matching loss, :func:`.correlation_training.matching_loss`).

**Validation** on pairs of held-out images: the median corner error (pixels of the window) of a MAGSAC++
homography fitted to the mutual nearest-neighbour matches of the detected keypoints, and the share of fixed
keypoints whose match is within 3 px of the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import InputError
from .correlation_net import apply_homography
from .correlation_training import CorrelationTrainConfig, _random_homography, matching_loss, synthetic_pair
from .keypoint_net import KeypointNet, detect_learned
from .training_loop import train_loop

__all__ = ["KeypointTrainConfig", "KeypointExample", "homographic_adaptation", "keypoint_example", "training_loss",
           "train_keypoint_net", "validate"]


@dataclass
class KeypointTrainConfig(CorrelationTrainConfig):
    """The pair geometry of :class:`~.correlation_training.CorrelationTrainConfig` (windows of about the network's
    size at the working size: scale near 1), and the adaptation's and the loss's settings."""

    size: int = 192
    window: tuple = (0.33, 0.45)
    max_shift: float = 0.4
    adaptation_warps: int = 32
    adaptation_share: float = 0.5
    descriptor_weight: float = 1.0


@dataclass
class KeypointExample:
    """A training image: the enhanced working image (float32 [0, 1], 0 outside the field of view) and its
    pseudo-label keypoints (working pixels ``(x, y)``)."""

    image: np.ndarray
    points: np.ndarray


def homographic_adaptation(u8: np.ndarray, mask: np.ndarray, rng: np.random.Generator, warps: int = 32,
                           share: float = 0.5) -> np.ndarray:
    """The repeatable SIFT keypoints ``(P, 2)`` (pixels ``(x, y)``) of ``u8`` inside ``mask`` (module docstring)."""
    import cv2

    h, w = u8.shape
    sift = cv2.SIFT_create(nfeatures=4000)
    to_pixel = np.array([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1.0]])
    geometry = CorrelationTrainConfig(max_rotation_deg=30.0, max_scale=0.2, max_shift=0.1)
    counts = np.zeros((h, w), np.float32)
    mask_u8 = mask.astype(np.uint8) * 255
    for k in range(warps):
        homography = np.eye(3) if k == 0 else to_pixel @ _random_homography(rng, geometry) @ np.linalg.inv(to_pixel)
        view = cv2.warpPerspective(u8, homography, (w, h), flags=cv2.INTER_LINEAR)
        view_mask = cv2.erode(cv2.warpPerspective(mask_u8, homography, (w, h), flags=cv2.INTER_NEAREST),
                              np.ones((9, 9), np.uint8))
        found = sift.detect(view, view_mask)
        if not found:
            continue
        back = np.c_[np.array([p.pt for p in found]), np.ones(len(found))] @ np.linalg.inv(homography).T
        xy = np.round(back[:, :2] / back[:, 2:3]).astype(int)
        ok = (xy >= 0).all(1) & (xy[:, 0] < w) & (xy[:, 1] < h)
        np.add.at(counts, (xy[ok, 1], xy[ok, 0]), 1.0)
    counts = cv2.boxFilter(counts, -1, (3, 3), normalize=False)
    counts += rng.uniform(0, 1e-3, counts.shape).astype(np.float32)  # one peak per plateau
    peaks = (counts == cv2.dilate(counts, np.ones((7, 7), np.uint8))) & (counts >= share * warps) & mask
    return np.argwhere(peaks)[:, ::-1].astype(np.float64)


def keypoint_example(array: np.ndarray, working_size: int, rng: np.random.Generator,
                     config: KeypointTrainConfig) -> KeypointExample:
    """The example of one image (float [0, 1], full size): enhanced at ``working_size``, adapted labels."""
    from .fundus import enhance, working_image

    work = working_image(array.astype(np.float32), working_size)
    u8 = enhance(work)
    points = homographic_adaptation(u8, work.mask, rng, config.adaptation_warps, config.adaptation_share)
    return KeypointExample(np.where(work.mask, u8 / 255.0, 0).astype(np.float32), points)


def _cell_labels(points: np.ndarray, size: int) -> np.ndarray:
    """``(size/8, size/8)`` class per cell: ``8 * (y % 8) + x % 8`` of a keypoint in it, else 64 (the dustbin)."""
    labels = np.full((size // 8, size // 8), 64, np.int64)
    xy = np.round(points).astype(int)
    xy = xy[(xy >= 0).all(1) & (xy < size).all(1)]
    labels[xy[:, 1] // 8, xy[:, 0] // 8] = 8 * (xy[:, 1] % 8) + xy[:, 0] % 8
    return labels


def _pair(example: KeypointExample, rng: np.random.Generator, config: KeypointTrainConfig):
    size = config.size
    fixed, moving, truth, (cx, cy, side) = synthetic_pair(example.image, size, rng, config, dropout=False)
    x = (example.points - np.array([cx, cy])) / (side / 2)
    x = x[(np.abs(x) <= 1).all(1)]
    y = apply_homography(torch.from_numpy(truth)[None], torch.from_numpy(x)[None])[0].numpy()
    to_px = (size - 1) / 2
    return fixed, moving, truth, _cell_labels((x + 1) * to_px, size), _cell_labels((y + 1) * to_px, size)


def _batch(examples: list[KeypointExample], config: KeypointTrainConfig, rng: np.random.Generator, count: int):
    pairs = [_pair(examples[rng.integers(len(examples))], rng, config) for _ in range(count)]
    stack = [torch.from_numpy(np.stack([p[k] for p in pairs])) for k in range(5)]
    return stack[0][:, None], stack[1][:, None], stack[2].float(), stack[3], stack[4]


def training_loss(net: KeypointNet, fixed: torch.Tensor, moving: torch.Tensor, truth: torch.Tensor,
                  fixed_labels: torch.Tensor, moving_labels: torch.Tensor,
                  descriptor_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Detector cross-entropy (both views) + ``descriptor_weight`` x the descriptors' matching loss."""
    logits_f, desc_f = net(fixed)
    logits_m, desc_m = net(moving)
    detector = 0.5 * (torch.nn.functional.cross_entropy(logits_f, fixed_labels)
                      + torch.nn.functional.cross_entropy(logits_m, moving_labels))
    n, d = desc_f.shape[:2]
    correlation = torch.einsum("ncp,ncq->npq", desc_f.reshape(n, d, -1), desc_m.reshape(n, d, -1))
    descriptor = matching_loss(correlation * torch.exp(net.logit_scale), fixed, truth)
    return detector + descriptor_weight * descriptor, {"detector": round(float(detector.detach()), 4),
                                                       "descriptor": round(float(descriptor.detach()), 4)}


@torch.no_grad()
def validate(net: KeypointNet, batch) -> dict:
    """Median corner error (pixels) of MAGSAC++ homographies from the detected keypoints' mutual matches, and the
    share of correct matches (within 3 px), on a batch of pairs."""
    import cv2

    fixed, moving, truth = batch[:3]
    size = fixed.shape[-1]
    to_px = np.array([[(size - 1) / 2, 0, (size - 1) / 2], [0, (size - 1) / 2, (size - 1) / 2], [0, 0, 1.0]])
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], float)
    errors, correct = [], []
    full = np.ones((size, size), bool)
    for k in range(fixed.shape[0]):
        pf, df = detect_learned(net, (fixed[k, 0].numpy() * 255).astype(np.uint8), full, 400)
        pm, dm = detect_learned(net, (moving[k, 0].numpy() * 255).astype(np.uint8), full, 400)
        true_h = to_px @ truth[k].double().numpy() @ np.linalg.inv(to_px)
        if len(pf) < 4 or len(pm) < 4:
            errors.append(float("inf"))
            continue
        similarity = df @ dm.T
        forward, backward = similarity.argmax(1), similarity.argmax(0)
        mutual = np.flatnonzero(backward[forward] == np.arange(len(pf)))
        a, b = pf[mutual], pm[forward[mutual]]
        expected = np.c_[a, np.ones(len(a))] @ true_h.T
        correct.append(float(np.mean(np.linalg.norm(expected[:, :2] / expected[:, 2:3] - b, axis=1) < 3))
                       if len(a) else 0.0)
        h = cv2.findHomography(a, b, cv2.USAC_MAGSAC, 3.0)[0] if len(a) >= 4 else None
        if h is None:
            errors.append(float("inf"))
            continue
        ends = [np.c_[corners, np.ones(4)] @ m.T for m in (h, true_h)]
        errors.append(float(np.linalg.norm(ends[0][:, :2] / ends[0][:, 2:3] - ends[1][:, :2] / ends[1][:, 2:3],
                                           axis=1).mean()))
    return {"corner_error_px": round(float(np.median(errors)), 3),
            "correct_matches": round(float(np.mean(correct)) if correct else 0.0, 4)}


def train_keypoint_net(net: KeypointNet, examples: list[KeypointExample], val_examples: list[KeypointExample],
                       config: KeypointTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` (CPU) on pairs of ``examples``; returns the figures a model card records."""
    if not examples or not any(len(e.points) for e in examples):
        raise InputError("no training images with pseudo-label keypoints")
    val = _batch(val_examples or examples, config, np.random.default_rng([config.seed, 10**6]), 16)
    return train_loop(
        net, config,
        lambda step: training_loss(net, *_batch(examples, config, np.random.default_rng([config.seed, step]),
                                                config.batch), descriptor_weight=config.descriptor_weight),
        lambda: validate(net, val), progress)
