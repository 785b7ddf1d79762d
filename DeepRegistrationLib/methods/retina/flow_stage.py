"""The ``dense_refinement`` stage: the refinement network's residual flow on vessel maps, after a global model.

Both images' vessel maps are made at the working size. The fixed map's pixels form a grid in physical space (the
fixed image's grid at the working resolution: same direction, origin and spacing scaled); the moving map is
resampled at those pixels through the transform so far (fixed -> moving, mm). The network gives the flow (fixed
working pixels) with ``warped(p + flow(p)) = fixed(p)``; in mm it is a displacement field ``u`` on that grid, faded
to zero beyond the fixed field of view, and the result is ``previous(x + u(x))``. Each level keeps its flow only if it
raises the correlation of the two vessel maps over the fixed field of view (else the previous transform stays, and
the figures say so).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...geometry import Grid
from ...metrics.similarity import NCCLoss
from ...sampling import grid_sample
from ...transforms import DisplacementField, IdentityTransform, compose
from ..stage import StageContext, StageOutcome, StageState
from .kinds import DenseRefinementSettings
from .stage import card_vessel_model, check_network_stage_inputs, feature_image, stage_network

__all__ = ["run_dense_refinement_stage", "check_inputs"]


def _network(settings: DenseRefinementSettings):
    return stage_network(settings.network, "FlowRefinementNet")


def check_inputs(settings: DenseRefinementSettings, fixed, moving, device) -> list[str]:
    """2D images of a usable size; the network (and its vessel network) found and verified before anything runs."""
    return check_network_stage_inputs(settings, fixed, moving, device, "FlowRefinementNet")


def _sample_moving(moving_map: np.ndarray, moving_work, moving_grid: Grid, mapped_mm: torch.Tensor,
                   shape: tuple[int, int]) -> torch.Tensor:
    """The moving working map ``(h', w')`` at physical points ``(h * w, 2)`` -> ``(h, w)``, zero outside."""
    coords = moving_work.normalised(moving_grid, mapped_mm).float().view(1, *shape, 2)
    return grid_sample(torch.from_numpy(moving_map)[None, None], coords, padding_mode="zeros")[0, 0]


def _refine_level(settings: DenseRefinementSettings, context: StageContext, net, vessel_model: str, size: int,
                  previous) -> tuple[object, float, float, float]:
    """One working size: the network's passes after ``previous``; returns the refined transform (or ``previous``
    when the flow does not raise the vessel maps' correlation), the correlations before and after, and the
    largest flow (fixed image pixels)."""
    import cv2

    from .flow_net import predict_flow, warp_by_flow

    fixed_work, fixed_u8 = feature_image(context.fixed, "vessels", size, settings.fixed_polarity,
                                         vessel_model=vessel_model)
    moving_work, moving_u8 = feature_image(context.moving, "vessels", size, settings.moving_polarity,
                                           vessel_model=vessel_model)
    fixed_map = torch.from_numpy(fixed_u8.astype(np.float32) / 255.0)
    moving_map = moving_u8.astype(np.float32) / 255.0
    shape = tuple(fixed_map.shape)
    grid = fixed_work.grid(context.fixed.grid)
    points = grid.physical_points(dtype=torch.float64).reshape(-1, 2)

    def warped_through(transform) -> torch.Tensor:
        with torch.no_grad():
            return _sample_moving(moving_map, moving_work, context.moving.grid,
                                  torch.as_tensor(transform.map_points(points)), shape)

    start_warped = warped = warped_through(previous)
    # the flow fades to zero beyond the fixed field of view (there the maps say nothing)
    fade = torch.from_numpy(cv2.GaussianBlur(fixed_work.mask.astype(np.float32), (0, 0), 8.0))
    to_mm = torch.as_tensor(np.asarray(grid.direction) @ np.diag(grid.spacing))  # working pixel (x, y) -> mm
    result, flow_total = previous, torch.zeros(2, *shape)
    for _ in range(settings.passes):
        context.check_cancel()
        flow = predict_flow(net, fixed_map, warped) * fade
        # compose on the pixel grid: total(p) = flow(p) + total(p + flow(p)) (a pixel of the last warp's input)
        moved, _ = warp_by_flow(flow_total[None], flow[None])
        flow_total = flow + moved[0]
        field = DisplacementField(torch.einsum("ij,jhw->ihw", to_mm, flow_total.double()).float(), grid)
        result = compose(field, previous)
        warped = warped_through(result)
    inside = torch.from_numpy(fixed_work.mask) & ((start_warped > 0) | (warped > 0))
    ncc = NCCLoss()
    before, after = (-float(ncc(fixed_map[None, None], w[None, None], inside[None, None].float()))
                     for w in (start_warped, warped))
    largest = float(flow_total.norm(dim=0).max()) / fixed_work.scale
    return (result if after > before else previous), before, after, largest


def run_dense_refinement_stage(settings: DenseRefinementSettings, context: StageContext,
                               state: StageState) -> StageOutcome:
    start_time = time.perf_counter()
    net, card = _network(settings)
    sizes = settings.working_sizes or [int(card["input"]["working_size"])]
    vessel_model = card_vessel_model(settings, card)
    result = state.linear if state.deformable is None else compose(state.deformable, state.linear)
    levels = []
    for level, size in enumerate(sizes):
        result, before, after, largest = _refine_level(settings, context, net, vessel_model, size, result)
        levels.append({"working_size": size, "correlation_start": round(before, 4), "correlation_final": round(after, 4),
                       "kept": after > before, "max_flow_px": round(largest, 2)})
        context.report({"model": settings.model, "level": level, "iteration": settings.passes - 1,
                        "loss": -max(before, after)})
    figures = {"refinement_levels": levels, "refinement_correlation_start": levels[-1]["correlation_start"],
               "refinement_correlation_final": levels[-1]["correlation_final"],
               "refinement_kept": any(lv["kept"] for lv in levels),
               "refinement_time_s": time.perf_counter() - start_time}
    return StageOutcome(StageState(IdentityTransform(context.dim), result),
                        -max(levels[-1]["correlation_start"], levels[-1]["correlation_final"]), figures)
