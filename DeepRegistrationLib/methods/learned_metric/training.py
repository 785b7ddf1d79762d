"""Training the learned metric: regress ``1 - exp(-|u| / s)`` of known misalignments (weighted MSE).

Simonovsky et al. train a classifier (aligned vs. misaligned, hinge loss); its output is flat away from the
decision boundary, which leaves an optimiser without a slope. Regressing a smooth function of the known local
misalignment instead (as Haskins et al. 2019 regress the target registration error) gives the score its
minimum at the alignment and a slope over the whole capture range; :mod:`.pairs` draws the examples.

Each step computes both images' features, reads the second's at ``x + u(x)`` (exactly as the optimisers
resample the moving features through the transform) and scores them against the first's. A run is seeded and
reproducible (example ``k`` of step ``s`` comes from a generator seeded by ``(seed, s, k)``); ``max_minutes`` stops
it early with the model it has.

Data-parallel (a ``torch.distributed`` group, ``deepreg train metric --nproc N`` or torchrun): process ``r`` draws
examples ``r, r + N, ...`` of every batch, gradients are averaged by ``DistributedDataParallel`` and the loss's
weight sum is summed over the group first, so a step is the one a single process takes with the whole batch.
Process 0 validates and reports.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data_parallel import example_generator, process_group
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


class _WeightedError(nn.Module):
    """The loss's two sums for a batch, as one module (so that DistributedDataParallel sees the forward pass):
    ``(sum of weight * squared error, sum of weight)``."""

    def __init__(self, net: LearnedMetricNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, fixed, moving, grid, target, weight) -> tuple[torch.Tensor, torch.Tensor]:
        fa = self.net.features(fixed)
        fb = F.grid_sample(self.net.features(moving), grid, align_corners=True)
        return ((self.net.score(fa, fb) - target) ** 2 * weight).sum(), weight.sum()


def _examples(train: list[LevelImages], dim: int, indices: list[int], config: "MetricTrainConfig", step: int,
              contrast: float) -> dict[str, torch.Tensor]:
    """Examples ``indices`` of step ``step``, each from its own seeded generator, as one batch."""
    parts = [make_batch(train, dim, 1, config.pairs, example_generator(config.seed, step, k), contrast)
             for k in indices]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def train_learned_metric(net: LearnedMetricNet, train: list[LevelImages], validation: list[LevelImages],
                         config: MetricTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` in place; returns the figures (losses along the way, steps, minutes)."""
    rank, world = process_group()
    if config.batch % world:
        raise ValueError(f"the batch ({config.batch}) must split evenly over the {world} processes")
    local = list(range(rank, config.batch, world))
    gv = torch.Generator().manual_seed(config.seed + 1)
    val_batches = [make_batch(validation or train, net.dim, config.batch, config.pairs, gv) for _ in range(4)]
    model: nn.Module = _WeightedError(net)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / max(config.steps, 1)))).item())

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            value = sum(float(batch_loss(net, b)) for b in val_batches) / len(val_batches)
        net.train()
        return value

    history = [{"step": 0, "validation_loss": validate() if rank == 0 else float("nan")}]
    start = time.monotonic()
    running, step = 0.0, 0
    net.train()
    for step in range(1, config.steps + 1):
        ramp = min(1.0, step / max(config.contrast_warmup * config.steps, 1.0))
        batch = _examples(train, net.dim, local, config, step, ramp * config.pairs.contrast_probability)
        num, den = model(batch["fixed"], batch["moving"], batch["grid"], batch["target"], batch["weight"])
        sums = torch.stack([num.detach(), den.detach()])
        if world > 1:
            torch.distributed.all_reduce(sums)
        # DistributedDataParallel averages gradients over the processes: scaled to the whole batch's weighted mean
        loss = num / sums[1].clamp(min=1.0) * world
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        value = float(sums[0] / sums[1].clamp(min=1.0))
        running = 0.95 * running + 0.05 * value if step > 1 else value
        minutes = (time.monotonic() - start) / 60
        last = step == config.steps or bool(config.max_minutes and minutes >= config.max_minutes)
        if world > 1:  # every process stops at the step process 0 stops at
            flag = torch.tensor([float(last)])
            torch.distributed.broadcast(flag, 0)
            last = bool(flag.item())
        if rank == 0 and (step % config.validate_every == 0 or last):
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
