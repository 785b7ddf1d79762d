"""The training loop the retinal networks share: Adam, a cosine learning-rate decay over ``config.steps``,
validation every ``config.validate_every`` steps and at the end, a wall-clock budget (``config.max_minutes``)."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

__all__ = ["train_loop"]


def train_loop(net: torch.nn.Module, config, step_loss: Callable[[int], tuple[torch.Tensor, dict]],
               validate: Callable[[], dict], progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` with ``step_loss(step) -> (loss, terms)`` (step from 1; the batch drawn from the step's seed);
    ``validate()`` (run in eval mode) gives the figures logged with each entry. ``config`` needs ``lr``, ``steps``,
    ``validate_every``, ``max_minutes``. Returns what a model card records: steps done, the first and last
    validation, the history and the time."""
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / max(config.steps, 1))))
    start = time.perf_counter()
    net.eval()
    initial = validate()
    history, step = [], 0
    for step in range(1, config.steps + 1):
        net.train()
        loss, terms = step_loss(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % config.validate_every == 0 or step == config.steps:
            net.eval()
            entry = {"step": step, "loss": round(float(loss.detach()), 4), **terms, **validate(),
                     "minutes": round((time.perf_counter() - start) / 60, 2)}
            history.append(entry)
            if progress is not None:
                progress(entry)
        if config.max_minutes and time.perf_counter() - start > 60 * config.max_minutes:
            break
    net.eval()
    final = validate()
    return {"steps_done": step, "initial_validation": initial, "final_validation": final, "history": history,
            "time_s": round(time.perf_counter() - start, 1)}
