"""A correlation network for retinal vessel maps: deep features of both maps, their 4D correlation volume, and
the matches it holds (the coarse level of LoFTR-style dense matching; the second source document's
"4D correlation tensor" of normalised cosine similarities).

``(fixed, moving)`` vessel maps ``(N, 1, S, S)`` in [0, 1] -> L2-normalised features ``(N, C, S/8, S/8)`` from one
shared encoder -> ``c[p, q] = <f_fixed[p], f_moving[q]>`` for every fixed cell ``p`` and moving cell ``q`` (the
4D tensor, kept as ``(N, P, Q)``). A match is a mutual nearest neighbour of the dual softmax of ``c`` (softmax over
``q`` times softmax over ``p``), with that product as its score. Cells are given by their centres in the input's normalised
coordinates ([-1, 1], ``align_corners=True``: pixel ``p`` of ``S`` at ``-1 + 2 p / (S - 1)``).

The volume also regresses a homography directly and differentiably (:meth:`CorrelationNet.soft_homography`): each
fixed cell's expected moving position under its dual-softmax row, weighted by the row's mass, fitted by weighted
least squares. Training uses it to put the registration loss on the warped vessel maps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CorrelationNet", "cell_centres", "cell_content", "fit_homography", "apply_homography", "conv_block",
           "dual_log_softmax"]

STRIDE = 8  # network pixels per correlation cell
CONTENT = 0.05  # a cell holds vessels when its mean vessel probability exceeds this


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, instance norm, leaky ReLU: the retinal networks' encoder block."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm2d(cout),
                         nn.LeakyReLU(0.2))


def dual_log_softmax(correlation: torch.Tensor) -> torch.Tensor:
    """Log of the dual softmax of ``(N, P, Q)`` similarities: softmax over ``Q`` times softmax over ``P``."""
    return torch.log_softmax(correlation, 2) + torch.log_softmax(correlation, 1)


def cell_centres(side: int, stride: int = 1) -> torch.Tensor:
    """``(side^2, 2)`` normalised (x, y) centres, row by row, of the ``stride x stride`` cells of an image of
    ``side * stride`` pixels (``align_corners=True``: pixel ``p`` at ``-1 + 2 p / (S - 1)``); ``stride=1``: the
    pixels themselves."""
    size = side * stride
    g = (torch.arange(side, dtype=torch.float32) * stride + (stride - 1) / 2) * 2 / (size - 1) - 1
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


def cell_content(maps: torch.Tensor, side: int, threshold: float = CONTENT) -> torch.Tensor:
    """``(N, side^2)`` booleans, row by row: the cells of vessel maps ``(N, 1, S, S)`` that hold vessels (the cells
    the network is trained to match; empty background and padding match each other and are left out)."""
    return nn.functional.adaptive_avg_pool2d(maps, side).reshape(maps.shape[0], -1) > threshold


def fit_homography(source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                   ridge: float = 1e-6) -> torch.Tensor:
    """Weighted least-squares homographies ``(N, 3, 3)`` (``h33 = 1``, the linearised DLT) taking ``source`` to
    ``target`` (``(N, P, 2)`` normalised points, ``weight`` ``(N, P)``); differentiable in all three."""
    n, p = source.shape[:2]
    x, y = source[..., 0], source[..., 1]
    u, v = target[..., 0], target[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)
    b = torch.cat([u, v], 1)
    w = torch.cat([weight, weight], 1)[..., None]
    normal = a.transpose(1, 2) @ (w * a)
    normal = normal + ridge * torch.eye(8, dtype=a.dtype, device=a.device) * normal.diagonal(0, 1, 2).mean(-1)[:, None, None]
    h = torch.linalg.solve(normal, (a.transpose(1, 2) @ (w[..., 0] * b)[..., None])[..., 0])
    return torch.cat([h, torch.ones(n, 1, dtype=h.dtype, device=h.device)], 1).reshape(n, 3, 3)


def apply_homography(h: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(N, P, 2)`` points mapped by ``(N, 3, 3)`` homographies."""
    mapped = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ h.transpose(1, 2)
    return mapped[..., :2] / mapped[..., 2:3]


class CorrelationNet(nn.Module):
    """See the module docstring; ``config`` holds the constructor arguments (what a model card records)."""

    def __init__(self, size: int = 128, features: int = 64, channels: tuple = (16, 32, 64)) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"size must be a multiple of 8, got {size}")
        self.config = {"size": size, "features": features, "channels": list(channels)}
        self.size = size
        c1, c2, c3 = channels
        self.encoder = nn.Sequential(conv_block(1, c1), conv_block(c1, c2, 2), conv_block(c2, c2),
                                     conv_block(c2, c3, 2), conv_block(c3, c3), conv_block(c3, features, 2),
                                     nn.Conv2d(features, features, 3, padding=1))
        self.logit_scale = nn.Parameter(torch.tensor(3.0))  # log of the softmax's inverse temperature

    def correlation(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """The scaled cosine similarities ``(N, P, Q)`` of every fixed cell to every moving cell."""
        a = nn.functional.normalize(self.encoder(fixed), dim=1)
        b = nn.functional.normalize(self.encoder(moving), dim=1)
        n, c = a.shape[:2]
        return torch.einsum("ncp,ncq->npq", a.reshape(n, c, -1), b.reshape(n, c, -1)) * torch.exp(self.logit_scale)

    dual_log_softmax = staticmethod(dual_log_softmax)

    def on_content(self, correlation: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``correlation`` with every pair involving a cell without vessels (either map) pushed to -1e4, so the
        dual softmax spreads nothing on empty background; what inference uses on whole photographs."""
        side = math.isqrt(correlation.shape[1])
        keep = cell_content(fixed, side)[:, :, None] & cell_content(moving, side)[:, None, :]
        return correlation.masked_fill(~keep, -1e4)

    def soft_homography(self, correlation: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The homographies ``(N, 3, 3)`` (fixed -> moving, normalised coordinates) regressed from ``correlation``
        (module docstring); ``weight`` ``(N, P)`` (e.g. :func:`cell_content` of the fixed maps) scales each fixed
        cell's row mass."""
        score = self.dual_log_softmax(correlation).exp()
        mass = score.sum(2) if weight is None else score.sum(2) * weight.to(score)
        centres = cell_centres(math.isqrt(score.shape[1]), STRIDE).to(score)
        expected = score @ centres / mass.clamp(min=1e-6)[..., None]
        return fit_homography(centres.expand(score.shape[0], -1, -1), expected, mass)

    @torch.no_grad()
    def matches(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mutual nearest-neighbour matches of one pair between cells that hold vessels in both maps: fixed and
        moving cell centres ``(M, 2)`` (normalised) and their dual-softmax scores ``(M,)``."""
        correlation = self.on_content(self.correlation(fixed, moving), fixed, moving)
        score = self.dual_log_softmax(correlation)[0].exp()
        forward = score.argmax(1)
        backward = score.argmax(0)
        side = math.isqrt(score.shape[0])
        mutual = (backward[forward] == torch.arange(score.shape[0])) & cell_content(fixed, side)[0] \
            & cell_content(moving, side)[0][forward]
        p = torch.nonzero(mutual)[:, 0]
        centres = cell_centres(side, STRIDE)
        return centres[p], centres[forward[p]], score[p, forward[p]]
