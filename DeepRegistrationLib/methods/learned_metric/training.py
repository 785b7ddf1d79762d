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

__all__ = ["MetricTrainConfig", "train_learned_metric", "batch_loss", "batch_slope_loss"]


@dataclass
class MetricTrainConfig:
    """Steps, batch, Adam's learning rate (cosine decay to 5 %), seed and the example drawing (:class:`PairConfig`).
    ``contrast_warmup``: the share of random-contrast examples rises linearly from 0 to the configured one over
    this fraction of the steps (a curriculum: same-contrast pairs first; from scratch, mixed contrasts alone
    leave the network at a constant output).
    ``slope_weight``: weight of the slope term (needs ``pairs.slope_offset_voxels``): each example is also read a
    small translation ``e`` either way, and the difference of the two readings' mean scores over the example is
    regressed onto the same difference of the targets, ``(S(u + e) - S(u - e) - (T(u + e) - T(u - e)))^2``
    (``S``, ``T``: weighted means over the example's voxels). That is the score's mean slope along ``e``, what
    an optimiser follows; at an aligned example the target difference is 0, so the term penalises any
    direction the network prefers between two contrasts (the T1 vs PD bias of the first models: 0.1-0.2 px,
    against 0.01-0.03 px between images of one contrast). The squared error of the scores themselves gives such
    sub-voxel offsets almost no weight (``t`` changes by 0.03-0.08 over 0.1-0.25 voxel).
    ``validation_seed``: the validation examples' generator. It does not follow ``seed``, so runs that differ
    in ``seed`` (a model trained on in phases, each with its own seed) are scored on the same examples and their
    validation losses compare (before 2026-12-07 it was ``seed + 1``: the cards of the phases trained then
    compare only within a phase).
    """

    steps: int = 2000
    batch: int = 16
    lr: float = 1e-3
    contrast_warmup: float = 0.3
    slope_weight: float = 0.0
    seed: int = 0
    validation_seed: int = 1
    validate_every: int = 100
    max_minutes: float = 0.0
    pairs: PairConfig = field(default_factory=PairConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _error_sums(net: LearnedMetricNet, fixed, moving, grid, target, weight, shifted_grid=None,
                shifted_target=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(sum of weight * squared error of the scores, the slope term's sum over the examples of weight sum *
    squared error or None)`` of a batch."""
    fa = net.features(fixed)
    fm = net.features(moving)
    score = net.score(fa, F.grid_sample(fm, grid, align_corners=True))
    squared = ((score - target) ** 2 * weight).sum()
    if shifted_grid is None:
        return squared, None
    dims = tuple(range(1, weight.dim()))
    total = weight.sum(dims).clamp(min=1.0)  # (B,)
    means = []
    for k in (0, 1):  # the readings at u + e and u - e
        s = net.score(fa, F.grid_sample(fm, shifted_grid[:, k], align_corners=True))
        means.append(((s * weight).sum(dims) / total, (shifted_target[:, k] * weight).sum(dims) / total))
    error = (means[0][0] - means[1][0]) - (means[0][1] - means[1][1])
    return squared, (error ** 2 * total).sum()


def batch_loss(net: LearnedMetricNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted mean squared error between the scores and the targets of a batch (:func:`.pairs.make_batch`)."""
    squared, _ = _error_sums(net, batch["fixed"], batch["moving"], batch["grid"], batch["target"], batch["weight"])
    return squared / batch["weight"].sum().clamp(min=1.0)


def batch_slope_loss(net: LearnedMetricNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The slope term of a batch drawn with ``slope_offset_voxels`` (see :class:`MetricTrainConfig`): the mean
    squared error of the examples' slopes, each example counted by its weight sum."""
    _, slope = _error_sums(net, *(batch[k] for k in ("fixed", "moving", "grid", "target", "weight", "shifted_grid",
                                                     "shifted_target")))
    return slope / batch["weight"].sum().clamp(min=1.0)


class _WeightedError(nn.Module):
    """The loss's sums for a batch, as one module (so that DistributedDataParallel sees the forward pass):
    ``(sum of weight * (squared error + slope_weight * slope error), sum of weight)``."""

    def __init__(self, net: LearnedMetricNet, slope_weight: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.slope_weight = slope_weight

    def forward(self, fixed, moving, grid, target, weight, shifted_grid=None,
                shifted_target=None) -> tuple[torch.Tensor, torch.Tensor]:
        squared, slope = _error_sums(self.net, fixed, moving, grid, target, weight, shifted_grid, shifted_target)
        total = squared if slope is None else squared + self.slope_weight * slope
        return total, weight.sum()


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
    gv = torch.Generator().manual_seed(config.validation_seed)
    val_batches = [make_batch(validation or train, net.dim, config.batch, config.pairs, gv) for _ in range(4)]
    slope = config.slope_weight > 0
    if slope and not config.pairs.slope_offset_voxels > 0:
        raise ValueError("a slope term (slope_weight > 0) needs examples read twice: pairs.slope_offset_voxels > 0")
    model: nn.Module = _WeightedError(net, config.slope_weight)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / max(config.steps, 1)))).item())

    def validate() -> dict:
        net.eval()
        squared, slopes = 0.0, 0.0
        with torch.no_grad():
            for b in val_batches:  # both terms from one pass of the network over the batch
                extra = (b["shifted_grid"], b["shifted_target"]) if slope else ()
                sq, sl = _error_sums(net, b["fixed"], b["moving"], b["grid"], b["target"], b["weight"], *extra)
                total = b["weight"].sum().clamp(min=1.0)
                squared += float(sq / total)
                slopes += float(sl / total) if slope else 0.0
        net.train()
        value = {"validation_loss": round(squared / len(val_batches), 5)}
        if slope:
            value["validation_slope_loss"] = round(slopes / len(val_batches), 5)
        return value

    history = [{"step": 0, **(validate() if rank == 0 else {"validation_loss": float("nan")})}]
    start = time.monotonic()
    running, step = 0.0, 0
    net.train()
    for step in range(1, config.steps + 1):
        ramp = min(1.0, step / max(config.contrast_warmup * config.steps, 1.0))
        batch = _examples(train, net.dim, local, config, step, ramp * config.pairs.contrast_probability)
        extra = (batch["shifted_grid"], batch["shifted_target"]) if slope else ()
        num, den = model(batch["fixed"], batch["moving"], batch["grid"], batch["target"], batch["weight"], *extra)
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
            history.append({"step": step, "train_loss": round(running, 5), **validate(), "minutes": round(minutes, 2)})
            if progress is not None:
                progress(history[-1])
        if last:
            break
    net.eval()
    return {"steps": step, "minutes": round((time.monotonic() - start) / 60, 2), "history": history,
            "initial_validation_loss": history[0]["validation_loss"],
            "final_validation_loss": history[-1]["validation_loss"]}
