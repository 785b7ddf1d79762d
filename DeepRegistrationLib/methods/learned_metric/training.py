"""Training the learned metric: regress ``1 - exp(-|u| / s)`` of known misalignments (weighted MSE).

Simonovsky et al. train a classifier (aligned vs. misaligned, hinge loss); its output is flat away from the
decision boundary, which leaves an optimiser without a slope. Regressing a smooth function of the known local
misalignment instead (as Haskins et al. 2019 regress the target registration error) gives the score its
minimum at the alignment and a slope over the whole capture range; :mod:`.pairs` draws the examples.

Each step computes both images' features, reads the second's at ``x + u(x)`` (exactly as the optimisers
resample the moving features through the transform) and scores them against the first's. A run is seeded and
reproducible; ``max_minutes`` stops it early with the model it has.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .network import LearnedMetricNet
from .pairs import LevelImages, PairConfig, make_batch

__all__ = ["MetricTrainConfig", "train_learned_metric", "batch_loss"]


@dataclass
class MetricTrainConfig:
    """Steps, batch, Adam's learning rate (cosine decay to 5 %), seed and the example drawing (:class:`PairConfig`).
    ``contrast_warmup``: the share of random-contrast examples rises linearly from 0 to the configured one over
    this fraction of the steps (a curriculum: same-contrast pairs first; from scratch, mixed contrasts alone
    leave the network at a constant output)."""

    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    contrast_warmup: float = 0.3
    seed: int = 0
    validate_every: int = 100
    max_minutes: float = 0.0
    pairs: PairConfig = field(default_factory=PairConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def batch_loss(net: LearnedMetricNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted mean squared error between the scores and the targets of a batch (:func:`.pairs.make_batch`)."""
    fa = net.features(batch["fixed"])
    fb = F.grid_sample(net.features(batch["moving"]), batch["grid"], align_corners=True)
    score = net.score(fa, fb)
    w = batch["weight"]
    return ((score - batch["target"]) ** 2 * w).sum() / w.sum().clamp(min=1.0)


def train_learned_metric(net: LearnedMetricNet, train: list[LevelImages], validation: list[LevelImages],
                         config: MetricTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` in place; returns the figures (losses along the way, steps, minutes)."""
    g = torch.Generator().manual_seed(config.seed)
    gv = torch.Generator().manual_seed(config.seed + 1)
    val_batches = [make_batch(validation or train, net.dim, config.batch, config.pairs, gv) for _ in range(4)]
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / max(config.steps, 1)))).item())

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            value = sum(float(batch_loss(net, b)) for b in val_batches) / len(val_batches)
        net.train()
        return value

    history = [{"step": 0, "validation_loss": validate()}]
    start = time.monotonic()
    running, step = 0.0, 0
    net.train()
    for step in range(1, config.steps + 1):
        ramp = min(1.0, step / max(config.contrast_warmup * config.steps, 1.0))
        loss = batch_loss(net, make_batch(train, net.dim, config.batch, config.pairs, g,
                                          ramp * config.pairs.contrast_probability))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step > 1 else value
        minutes = (time.monotonic() - start) / 60
        last = step == config.steps or (config.max_minutes and minutes >= config.max_minutes)
        if step % config.validate_every == 0 or last:
            history.append({"step": step, "train_loss": round(running, 5), "validation_loss": round(validate(), 5),
                            "minutes": round(minutes, 2)})
            if progress is not None:
                progress(history[-1])
        if last:
            break
    net.eval()
    return {"steps": step, "minutes": round((time.monotonic() - start) / 60, 2), "history": history,
            "initial_validation_loss": history[0]["validation_loss"],
            "final_validation_loss": history[-1]["validation_loss"]}
