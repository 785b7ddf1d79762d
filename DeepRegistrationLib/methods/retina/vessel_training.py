"""Training the vessel U-Net (:class:`.vessel_net.VesselNet`) on pseudo-labels: no manual vessel annotation.

Each training image (a colour photograph's green channel or an angiogram) is taken at its working size; its
label is its own Frangi vessel map (:func:`.fundus.vesselness`, with the image's known vessel polarity) above
the ``label_quantile`` of the field of view: the thin-line skeleton of the vessel tree that the filter sees,
nothing the filter does not. The loss (binary cross-entropy + soft Dice) counts the field of view only.

Each example is a random crop at a random scale (0.75-1.25), flipped and rotated by multiples of 90 degrees,
with a random gamma, contrast, brightness and noise, and **inverted inside the field of view with probability
``invert_probability``**: the network must find dark vessels on a bright fundus and bright ones on a dark
angiogram alike, which the filter cannot without being told the polarity. Examples are drawn by a generator
seeded by (seed, step), so a run is reproducible.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ...errors import InputError
from .fundus import field_of_view_mask, vesselness
from .vessel_net import VesselNet

__all__ = ["VesselExample", "VesselTrainConfig", "vessel_example", "train_vessel_net", "dice"]


@dataclass
class VesselExample:
    """A working image, its pseudo-label and the field of view the loss counts (all ``(H, W)``)."""

    image: np.ndarray  # float32 [0, 1], normalised to the field of view's 1-99th percentiles
    label: np.ndarray  # float32 {0, 1}
    mask: np.ndarray  # bool


@dataclass
class VesselTrainConfig:
    steps: int = 3000
    batch: int = 8
    crop: int = 160
    lr: float = 2e-3
    seed: int = 0
    invert_probability: float = 0.5
    validate_every: int = 250
    max_minutes: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def vessel_example(array: np.ndarray, polarity: str, working_size: int = 768,
                   label_quantile: float = 0.88) -> VesselExample:
    """The training example of one image (float [0, 1], ``(H, W)``) whose vessels are ``dark`` or ``bright``."""
    from .fundus import working_image

    if polarity not in ("dark", "bright"):
        raise InputError(f"a training image's vessel polarity must be dark or bright, got {polarity!r}")
    work = working_image(array, working_size)
    vessels = vesselness(work, polarity)
    inner = field_of_view_mask(work.array, erosion_px=8)
    threshold = float(np.quantile(vessels[inner], label_quantile))
    label = ((vessels > threshold) & inner).astype(np.float32)
    values = work.array[work.mask]
    lo, hi = np.percentile(values, [1, 99])
    image = np.where(work.mask, np.clip((work.array - lo) / max(hi - lo, 1e-6), 0, 1), 0).astype(np.float32)
    return VesselExample(image, label, inner)


def _rescaled(example: VesselExample, scale: float) -> VesselExample:
    import cv2

    if abs(scale - 1.0) < 1e-3:
        return example
    size = (max(8, round(example.image.shape[1] * scale)), max(8, round(example.image.shape[0] * scale)))
    return VesselExample(cv2.resize(example.image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR),
                         (cv2.resize(example.label, size, interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.float32),
                         cv2.resize(example.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0)


def _draw(pyramids: list[list[VesselExample]], config: VesselTrainConfig, rng: np.random.Generator):
    """One batch ``(images, labels, masks)`` of ``(B, 1, crop, crop)`` float tensors."""
    c = config.crop
    images, labels, masks = [], [], []
    while len(images) < config.batch:
        example = pyramids[rng.integers(len(pyramids))][rng.integers(3)]
        h, w = example.image.shape
        if h < c or w < c:
            continue
        # crops centred in the field of view more often than not
        for _ in range(10):
            y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
            if example.mask[y:y + c, x:x + c].mean() > 0.3:
                break
        crop = [a[y:y + c, x:x + c] for a in (example.image, example.label, example.mask.astype(np.float32))]
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        crop = [np.rot90(a, k) for a in crop]
        if flip:
            crop = [a[:, ::-1] for a in crop]
        image, label, mask = (np.ascontiguousarray(a) for a in crop)
        image = image ** float(np.exp(rng.uniform(-0.4, 0.4)))
        image = image * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
        image = image + rng.normal(0, rng.uniform(0, 0.04), image.shape)
        inside = mask > 0
        if rng.random() < config.invert_probability:  # an angiogram-like rendering: bright vessels
            image = np.where(inside, 1.0 - image, 0.0)
        image = np.where(inside, np.clip(image, 0, 1), 0.0)
        images.append(image.astype(np.float32))
        labels.append(label)
        masks.append(mask)
    stack = [torch.from_numpy(np.stack(a))[:, None] for a in (images, labels, masks)]
    return stack[0], stack[1], stack[2]


def dice(probability: torch.Tensor, label: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice of ``probability`` and ``label`` inside ``mask`` (batch mean)."""
    p, l = probability * mask, label * mask
    dims = tuple(range(1, p.dim()))
    return ((2 * (p * l).sum(dims) + eps) / (p.sum(dims) + l.sum(dims) + eps)).mean()


def _loss(logit: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, label, reduction="none",
                                                               pos_weight=torch.tensor(3.0))
    bce = (bce * mask).sum() / mask.sum().clamp(min=1)
    return bce + 1.0 - dice(torch.sigmoid(logit), label, mask)


@torch.no_grad()
def _validate(net: VesselNet, examples: list[VesselExample], invert: bool) -> float:
    """Mean hard Dice (probability > 0.5) against the pseudo-labels on whole validation images; ``invert``:
    on their inverted renderings (the other polarity)."""
    from .vessel_net import vessel_probability

    scores = []
    for ex in examples:
        image = np.where(ex.mask, 1.0 - ex.image, 0.0).astype(np.float32) if invert else ex.image
        p = vessel_probability(net, image, None) > 0.5
        m = ex.mask
        inter = (p & (ex.label > 0) & m).sum()
        scores.append(2 * inter / max((p & m).sum() + ((ex.label > 0) & m).sum(), 1))
    return float(np.mean(scores)) if scores else float("nan")


def train_vessel_net(net: VesselNet, examples: list[VesselExample], val_examples: list[VesselExample],
                     config: VesselTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` (CPU); returns the figures a model card records (validation Dice before and after, both
    polarities, the loss history)."""
    if not examples:
        raise InputError("no training images")
    pyramids = [[_rescaled(ex, s) for s in (0.75, 1.0, 1.25)] for ex in examples]
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / max(config.steps, 1))))
    history = []
    start = time.perf_counter()
    net.eval()
    initial = (_validate(net, val_examples, False), _validate(net, val_examples, True))
    step = 0
    for step in range(1, config.steps + 1):
        net.train()
        rng = np.random.default_rng([config.seed, step])
        images, labels, masks = _draw(pyramids, config, rng)
        loss = _loss(net(images), labels, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % config.validate_every == 0 or step == config.steps:
            net.eval()
            entry = {"step": step, "loss": round(float(loss.detach()), 4),
                     "val_dice": round(_validate(net, val_examples, False), 4),
                     "val_dice_inverted": round(_validate(net, val_examples, True), 4),
                     "minutes": round((time.perf_counter() - start) / 60, 2)}
            history.append(entry)
            if progress is not None:
                progress(entry)
        if config.max_minutes and time.perf_counter() - start > 60 * config.max_minutes:
            break
    net.eval()
    return {"steps_done": step, "initial_val_dice": round(initial[0], 4),
            "initial_val_dice_inverted": round(initial[1], 4),
            "final_val_dice": round(_validate(net, val_examples, False), 4),
            "final_val_dice_inverted": round(_validate(net, val_examples, True), 4), "history": history,
            "time_s": round(time.perf_counter() - start, 1)}

