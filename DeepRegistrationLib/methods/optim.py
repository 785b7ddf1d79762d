"""Adam for the iterative stages.

Written out because constructing ``torch.optim.Adam`` imports ``torch._dynamo`` (about 2 s, once per process:
a large share of a short registration run from the command line). It is PyTorch's Adam with its defaults
(Kingma & Ba 2015; tested step for step against ``torch.optim.Adam``) plus a step-size ``factor`` shared by all
groups, which the linear stages decay within a level.
"""

from __future__ import annotations

import torch

__all__ = ["Adam"]


class Adam:
    """Adam over a few parameter groups ``[{"params": [...], "lr": float}, ...]``."""

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in self.groups for p in g["params"]}
        self.t = 0
        self.factor = 1.0  # multiplies every group's step size (linear decay schedules)

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state[id(p)]
                m.mul_(self.beta1).add_(p.grad, alpha=1.0 - self.beta1)
                v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1.0 - self.beta2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] * self.factor / c1)
