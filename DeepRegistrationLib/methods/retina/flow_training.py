"""Training the dense refinement network (:mod:`.flow_net`) on synthetic residual displacements of real vessel maps.

**Pairs.** A vessel map (a training image's, at its working size) gives the moving image: a random square window
of ``size`` pixels. The truth is a random displacement ``u`` (pixels) of the kind a global model leaves: a random
homography that moves the window's corners by up to ``max_corner_px`` plus a smooth random field (a 3-6 node
lattice, cubic interpolation) of up to ``max_elastic_px``. The fixed image is the map read at ``p + u(p)``, so that
``moving(p + u(p)) = fixed(p)``: the network's target is ``u`` itself. Content enters from outside the window. The
moving map loses vessels by smooth random dropout (as a second modality or a dimmer photograph shows fewer), both
maps get a random blur (vessel width differs between modalities), a gain and noise.

**Loss.** The second source document's loss on vessel maps (:func:`.vessel_loss.vessel_registration_loss`: Dice +
cross-entropy + reverse hinge + Chamfer) between the fixed map and the moving map warped by the predicted flow,
plus ``smoothness`` x the diffusion regulariser of the flow (pixels), plus ``supervised_weight`` x the mean
end-point error to the known ``u`` (pixels): the synthetic truth is there, and on two CPU cores it is what makes
the flow converge within minutes (``--supervised-weight 0`` trains on the seed's loss alone).

**Validation** on pairs of held-out maps: the mean end-point error (pixels) of the predicted flow and of no flow,
over the pixels that hold vessels in the fixed map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import InputError
from ...metrics.regularisers import diffusion_regulariser_batch
from .flow_net import FlowRefinementNet, warp_by_flow
from .training_loop import train_loop
from .vessel_loss import distance_to_vessels, vessel_registration_loss

__all__ = ["FlowTrainConfig", "synthetic_flow_pair", "flow_batch", "flow_training_loss", "validate_flow",
           "train_flow_net"]


@dataclass
class FlowTrainConfig:
    steps: int = 1500
    batch: int = 8
    size: int = 192
    lr: float = 1e-3
    seed: int = 0
    max_corner_px: float = 8.0
    max_elastic_px: float = 4.0
    smoothness: float = 1.0
    supervised_weight: float = 0.1
    validate_every: int = 100
    max_minutes: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _random_flow(rng: np.random.Generator, size: int, config: FlowTrainConfig) -> np.ndarray:
    """``(2, size, size)`` float32 displacement (pixels, (dx, dy)): corner-jitter homography + smooth field."""
    import cv2

    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], np.float32)
    jitter = rng.uniform(-1, 1, (4, 2)) * rng.uniform(0, config.max_corner_px)
    h = cv2.getPerspectiveTransform(corners, (corners + jitter).astype(np.float32))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    q = np.stack([xs, ys, np.ones_like(xs)], -1) @ h.T
    flow = np.stack([q[..., 0] / q[..., 2] - xs, q[..., 1] / q[..., 2] - ys])
    nodes = int(rng.integers(3, 7))
    lattice = rng.normal(0, 1, (2, nodes, nodes))
    lattice *= rng.uniform(0, config.max_elastic_px) / max(np.abs(lattice).max(), 1e-6)
    for c in range(2):
        flow[c] += cv2.resize(lattice[c], (size, size), interpolation=cv2.INTER_CUBIC)
    return flow.astype(np.float32)


def synthetic_flow_pair(image: np.ndarray, rng: np.random.Generator, config: FlowTrainConfig):
    """``(fixed, moving, flow)``: two ``(size, size)`` float32 maps and the ``(2, size, size)`` truth with
    ``moving(p + flow(p)) = fixed(p)`` (module docstring)."""
    import cv2

    size = config.size
    h, w = image.shape
    if min(h, w) < size:
        raise InputError(f"a vessel map of {w}x{h} pixels is smaller than the training window ({size})")
    x0, y0 = rng.uniform(0, w - size), rng.uniform(0, h - size)
    flow = _random_flow(rng, size, config)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    moving = image[int(y0):int(y0) + size, int(x0):int(x0) + size].astype(np.float32)
    fx, fy = xs + int(x0) + flow[0], ys + int(y0) + flow[1]
    fixed = cv2.remap(image.astype(np.float32), fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=0)
    keep = cv2.resize(rng.uniform(0, 1, (5, 5)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    moving = moving * (keep > rng.uniform(0.0, 0.3))
    out = []
    for m in (fixed, moving):
        sigma = rng.uniform(0, 1.2)
        if sigma > 0.3:
            m = cv2.GaussianBlur(m, (0, 0), sigma)
            m = m / max(float(m.max()), 1e-6) * float(rng.uniform(0.8, 1.0))
        m = m * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, m.shape)
        out.append(np.clip(m, 0, 1).astype(np.float32))
    return out[0], out[1], flow


def flow_batch(maps: list[np.ndarray], config: FlowTrainConfig, rng: np.random.Generator, count: int):
    """``(fixed, moving, flow)`` tensors ``(count, 1, S, S)``, ``(count, 1, S, S)``, ``(count, 2, S, S)``."""
    pairs = [synthetic_flow_pair(maps[rng.integers(len(maps))], rng, config) for _ in range(count)]
    return (torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None],
            torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None],
            torch.from_numpy(np.stack([p[2] for p in pairs])))


def flow_training_loss(net: FlowRefinementNet, fixed: torch.Tensor, moving: torch.Tensor, truth: torch.Tensor,
                       config: FlowTrainConfig) -> tuple[torch.Tensor, dict]:
    """The seed's vessel-map loss of the warped moving map + smoothness + supervised end-point error, and the
    terms for the log."""
    flow = net(fixed, moving)
    warped, inside = warp_by_flow(moving, flow)
    registration, terms = vessel_registration_loss(warped.clamp(0, 1), fixed, inside, distance_to_vessels(fixed))
    smooth = diffusion_regulariser_batch(flow)
    epe = (flow - truth).norm(dim=1).mean()
    loss = registration + config.smoothness * smooth + config.supervised_weight * epe
    return loss, {**terms, "smoothness": round(float(smooth.detach()), 4), "epe_px": round(float(epe.detach()), 3)}


@torch.no_grad()
def validate_flow(net: FlowRefinementNet, batch) -> dict:
    """Mean end-point error (pixels) of the predicted flow and of no flow, over the fixed maps' vessel pixels."""
    fixed, moving, truth = batch
    vessels = (fixed[:, 0] > 0.5).float()
    count = vessels.sum().clamp(min=1)
    error = ((net(fixed, moving) - truth).norm(dim=1) * vessels).sum() / count
    start = (truth.norm(dim=1) * vessels).sum() / count
    return {"epe_vessels_px": round(float(error), 3), "epe_no_flow_px": round(float(start), 3)}


def train_flow_net(net: FlowRefinementNet, maps: list[np.ndarray], val_maps: list[np.ndarray],
                   config: FlowTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` (CPU) on synthetic residual flows of ``maps`` (vessel maps, float [0, 1]); returns the figures
    a model card records."""
    if not maps:
        raise InputError("no training vessel maps")
    if config.size % net.multiple:
        raise InputError(f"the training window ({config.size} px) must be a multiple of {net.multiple}")
    val = flow_batch(val_maps or maps, config, np.random.default_rng([config.seed, 10**6]), 16)
    return train_loop(
        net, config,
        lambda step: flow_training_loss(net, *flow_batch(maps, config, np.random.default_rng([config.seed, step]),
                                                         config.batch), config),
        lambda: validate_flow(net, val), progress)
