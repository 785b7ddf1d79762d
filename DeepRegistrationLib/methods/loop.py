"""The one optimisation loop of the iterative stages: cancel, step, schedule, divergence check, progress.

``step`` computes the objective for the current parameters and returns ``(objective, reported, extra)``: the
objective is back-propagated and the optimiser steps; ``reported`` (the similarity) is what progress events
and the stage's final figure show, ``extra`` adds fields to the event. On the CPU every step is reported; on a
GPU the loss is read back (a host synchronisation) only every :data:`GPU_REPORT_EVERY` steps and at the last,
so the device is not stalled on every step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import RegistrationDiverged
from .optim import Adam
from .stage import StageContext

__all__ = ["optimise", "GPU_REPORT_EVERY"]

GPU_REPORT_EVERY = 10


def optimise(context: StageContext, optimiser: Adam, iterations: int,
             step: Callable[[], tuple[torch.Tensor, torch.Tensor, dict]], *, model: str, level: int,
             after_step: Callable[[int], None] | None = None) -> float:
    """Run ``iterations`` steps; return the last reported value (NaN when no step ran)."""
    every = 1 if context.device.type == "cpu" else GPU_REPORT_EVERY
    value = float("nan")
    for it in range(iterations):
        context.check_cancel()
        optimiser.zero_grad()
        objective, reported, extra = step()
        objective.backward()
        optimiser.step()
        if after_step is not None:
            after_step(it)
        if it % every == 0 or it == iterations - 1:
            value = float(reported.detach())
            if not math.isfinite(value):
                raise RegistrationDiverged(f"the {model} stage diverged (similarity {value} at level {level}, "
                                           f"step {it}): lower its learning_rate or check the images")
            context.report({"model": model, "level": level, "iteration": it, "loss": value,
                            **{k: float(v.detach()) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}})
    return value
