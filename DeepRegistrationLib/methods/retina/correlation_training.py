"""Training the correlation network (:mod:`.correlation_net`) on synthetic pairs of real vessel maps.

**Pairs.** A vessel map (a training image's, at its working size) gives the fixed image: a random square window
(``window`` of the shorter side) resized to the network's size. The moving image is the same map seen through a
random homography ``T`` (normalised coordinates of the window: rotation up to ``max_rotation_deg``, scale
``1 +- max_scale``, shift up to ``max_shift`` half-widths, perspective up to 0.05), sampled from the whole map:
content enters from outside the window, and beyond the map's edge the moving image is dark, as the rim of a
second photograph whose field of view overlaps the first one's only in part. Smooth random vessel dropout, a gain
and noise make the two maps differ. ``T`` is the truth: ``moving(T(x)) = fixed(x)``.

**Loss.** Two terms:

* *matching*: for every fixed cell on a vessel whose image under ``T`` falls in the moving square, the negative
  log of the dual softmax at its true moving cell (the cross-entropy of dense matching, as LoFTR's coarse level);
  it teaches features that are alike exactly where the vessels correspond;
* *registration* (weight ``registration_weight``): the second source document's loss on vessel maps
  (:func:`.vessel_loss.vessel_registration_loss`: Dice + cross-entropy + reverse hinge + Chamfer) between the fixed
  map and the moving map warped by the homography the network regresses from its correlation volume
  (:meth:`~.correlation_net.CorrelationNet.soft_homography`); it asks the whole volume, not only the true cells, to
  agree on one mapping. (On its own, without the matching term, it did not learn within the CPU budget.)

**Validation** on pairs of held-out maps: the share of vessel cells whose best match is the true cell, and the
median corner error (network pixels) of the MAGSAC++ homography fitted to the mutual matches and of the regressed
homography.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import InputError
from .correlation_net import STRIDE, CorrelationNet, apply_homography, cell_centres, cell_content, dual_log_softmax
from .training_loop import train_loop
from .vessel_loss import distance_to_vessels, vessel_registration_loss

__all__ = ["CorrelationTrainConfig", "synthetic_pair", "cell_targets", "matching_loss", "registration_loss",
           "training_loss", "train_correlation_net", "validate"]

_CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


@dataclass
class CorrelationTrainConfig:
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    seed: int = 0
    max_rotation_deg: float = 25.0
    max_scale: float = 0.15
    max_shift: float = 0.8
    window: tuple = (0.5, 0.8)
    registration_weight: float = 1.0
    validate_every: int = 100
    max_minutes: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _random_homography(rng: np.random.Generator, config: CorrelationTrainConfig) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    h = np.eye(3)
    h[:2, :2] = rng.uniform(1 - config.max_scale, 1 + config.max_scale) * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    h[:2, 2] = rng.uniform(-config.max_shift, config.max_shift, 2)
    h[2, :2] = rng.uniform(-0.05, 0.05, 2)
    return h


def synthetic_pair(image: np.ndarray, size: int, rng: np.random.Generator, config: CorrelationTrainConfig,
                   dropout: bool = True):
    """``(fixed, moving, T, window)``: two ``(size, size)`` float32 images, the 3x3 homography (normalised
    coordinates) with ``moving(T(x)) = fixed(x)``, and the fixed window ``(cx, cy, side)`` in ``image``'s pixels
    (a pixel ``p`` of ``image`` is at ``x = (p - c) / (side / 2)`` in the fixed square). ``dropout``: smooth random
    loss of content in the moving image (vessel maps); without it only gain, gamma and noise change."""
    import cv2

    h, w = image.shape
    side = rng.uniform(*config.window) * min(h, w)
    cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
    grid = np.linspace(-1, 1, size)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx, gy, np.ones_like(gx)], -1).reshape(-1, 3)

    def sample(normalised: np.ndarray) -> np.ndarray:
        px = (cx + normalised[:, 0] * side / 2).reshape(size, size).astype(np.float32)
        py = (cy + normalised[:, 1] * side / 2).reshape(size, size).astype(np.float32)
        return cv2.remap(image, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    truth = _random_homography(rng, config)
    fixed = sample(points[:, :2])
    back = points @ np.linalg.inv(truth).T
    moving = sample(back[:, :2] / back[:, 2:3])
    if dropout:
        keep = cv2.resize(rng.uniform(0, 1, (6, 6)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        moving = moving * (keep > 0.25)
    else:
        moving = np.clip(moving, 0, 1) ** float(np.exp(rng.uniform(-0.3, 0.3)))
    moving = moving * rng.uniform(0.7, 1.2) + rng.normal(0, 0.03, moving.shape)
    return fixed.astype(np.float32), np.clip(moving, 0, 1).astype(np.float32), truth, (cx, cy, side)


def _batch(maps: list[np.ndarray], size: int, config: CorrelationTrainConfig, rng: np.random.Generator, count: int):
    pairs = [synthetic_pair(maps[rng.integers(len(maps))], size, rng, config) for _ in range(count)]
    return (torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None],
            torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None],
            torch.from_numpy(np.stack([p[2] for p in pairs])).float())


def cell_targets(truth: torch.Tensor, side: int, fixed: torch.Tensor):
    """For every fixed cell of a ``side x side`` lattice: the index of its true moving cell under ``truth``, and
    whether it counts (on content, and its image inside the moving square)."""
    centres = cell_centres(side, STRIDE)
    mapped = torch.cat([centres, torch.ones(len(centres), 1)], 1) @ truth.transpose(1, 2)
    mapped = mapped[..., :2] / mapped[..., 2:3]
    size = side * STRIDE
    cell = (((mapped + 1) / 2 * (size - 1) - (STRIDE - 1) / 2) / STRIDE).round().long()
    inside = ((cell >= 0) & (cell < side)).all(-1)
    index = cell[..., 1].clamp(0, side - 1) * side + cell[..., 0].clamp(0, side - 1)
    return index, inside & cell_content(fixed, side)


def matching_loss(correlation: torch.Tensor, fixed: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The dual-softmax cross-entropy at the true matches of ``(N, P, Q)`` cell similarities (module docstring)."""
    index, valid = cell_targets(truth, math.isqrt(correlation.shape[1]), fixed)
    log_score = dual_log_softmax(correlation)
    nll = -log_score.gather(2, index[..., None])[..., 0]
    return (nll * valid).sum() / valid.sum().clamp(min=1)


def warp_by_homography(moving: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``moving`` ``(N, 1, S, S)`` resampled on the fixed square through ``h`` (fixed -> moving, normalised), and the
    mask of fixed pixels that land inside it."""
    size = moving.shape[-1]
    points = cell_centres(size).to(moving).expand(moving.shape[0], -1, -1)
    grid = apply_homography(h.to(moving), points).reshape(moving.shape[0], size, size, 2)
    warped = torch.nn.functional.grid_sample(moving, grid, align_corners=True, padding_mode="zeros")
    mask = (grid.abs() <= 1).all(-1, keepdim=True).permute(0, 3, 1, 2).to(moving)
    return warped, mask


def registration_loss(net: CorrelationNet, correlation: torch.Tensor, fixed: torch.Tensor,
                      moving: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The vessel-map registration loss of the regressed homography (see the module docstring)."""
    warped, mask = warp_by_homography(moving, net.soft_homography(correlation))
    return vessel_registration_loss(warped.clamp(0, 1), fixed, mask, distance_to_vessels(fixed))


def training_loss(net: CorrelationNet, fixed: torch.Tensor, moving: torch.Tensor, truth: torch.Tensor,
                  registration_weight: float) -> tuple[torch.Tensor, dict]:
    """Matching + ``registration_weight`` x registration (module docstring), and the terms for the log."""
    correlation = net.correlation(fixed, moving)
    matching = matching_loss(correlation, fixed, truth)
    terms = {"matching": round(float(matching.detach()), 4)}
    if registration_weight <= 0:
        return matching, terms
    registration, parts = registration_loss(net, correlation, fixed, moving)
    return matching + registration_weight * registration, {**terms, **parts}


@torch.no_grad()
def validate(net: CorrelationNet, batch) -> dict:
    """Match accuracy and the median corner error (network pixels) of MAGSAC++ homographies on a batch."""
    import cv2

    fixed, moving, truth = batch
    side = net.size // 8
    index, valid = cell_targets(truth, side, fixed)
    correlation = net.correlation(fixed, moving)
    best = correlation.argmax(2)
    accuracy = float(((best == index) & valid).sum() / valid.sum().clamp(min=1))
    regressed = _corner_error(net.soft_homography(correlation).double(), truth.double()) * (net.size - 1) / 2
    errors = []
    for k in range(fixed.shape[0]):
        f, m, _ = net.matches(fixed[k:k + 1], moving[k:k + 1])
        h = None
        if len(f) >= 6:
            h, _ = cv2.findHomography(f.double().numpy(), m.double().numpy(), cv2.USAC_MAGSAC, 2.5 / side)
        if h is None:
            errors.append(float("inf"))
            continue
        ends = []
        for homography in (h, truth[k].double().numpy()):
            c = np.c_[_CORNERS, np.ones(4)] @ homography.T
            ends.append(c[:, :2] / c[:, 2:3])
        errors.append(float(np.linalg.norm(ends[0] - ends[1], axis=1).mean() * (net.size - 1) / 2))
    return {"match_accuracy": round(accuracy, 4), "corner_error_px": round(float(np.median(errors)), 3),
            "regressed_corner_error_px": round(float(regressed.median()), 3)}


def _corner_error(h: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean distance (normalised units) of the window's corners under ``h`` and ``truth``, per pair."""
    corners = torch.as_tensor(_CORNERS, dtype=h.dtype).expand(h.shape[0], -1, -1)
    return (apply_homography(h, corners) - apply_homography(truth, corners)).norm(dim=-1).mean(-1)


def train_correlation_net(net: CorrelationNet, maps: list[np.ndarray], val_maps: list[np.ndarray],
                          config: CorrelationTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` (CPU) on synthetic pairs of ``maps`` (vessel maps, float [0, 1]); returns the figures a model
    card records."""
    if not maps:
        raise InputError("no training vessel maps")
    val = _batch(val_maps or maps, net.size, config, np.random.default_rng([config.seed, 10**6]), 16)
    return train_loop(
        net, config,
        lambda step: training_loss(net, *_batch(maps, net.size, config, np.random.default_rng([config.seed, step]),
                                                config.batch), config.registration_weight),
        lambda: validate(net, val), progress)
