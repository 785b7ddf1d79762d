"""The ``correlation`` stage: the correlation network's matches between two vessel maps, as a homography in
physical space.

Each image's vessel map (at the working size on the model card) is padded to a square (bottom, right) and resized
to the network's size; ``N`` maps the image's physical points to that square's normalised coordinates (affine:
physical -> index -> working pixel -> square pixel -> [-1, 1]). The network's mutual matches (cell centres) are
taken back to mm through ``N^-1`` of each image, and MAGSAC++ fits the homography (fixed -> moving, mm); or
(``fit: regression``) the network's regressed homography ``H`` becomes ``N_moving^-1 H N_fixed``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...errors import InputError
from ...transforms import IdentityTransform
from ...transforms.polynomial import HomographyTransform
from ..stage import StageContext, StageOutcome, StageState
from .correlation_net import STRIDE, cell_content
from .kinds import CorrelationSettings
from .stage import card_vessel_model, check_network_stage_inputs, feature_image, stage_network

__all__ = ["run_correlation_stage", "check_inputs"]


def _network(settings: CorrelationSettings):
    return stage_network(settings.network, "CorrelationNet")


def check_inputs(settings: CorrelationSettings, fixed, moving, device) -> list[str]:
    """2D images of a usable size; the network (and its vessel network) found and verified before anything runs."""
    return check_network_stage_inputs(settings, fixed, moving, device, "CorrelationNet")


def _square(image, settings: CorrelationSettings, card: dict, polarity: str, size: int):
    """The network input ``(1, 1, size, size)`` and the 3x3 map physical -> the square's normalised coordinates."""
    import cv2

    work, u8 = feature_image(image, "vessels", int(card["input"]["working_size"]), polarity,
                             vessel_model=card_vessel_model(settings, card))
    side = max(work.array.shape)
    square = np.zeros((side, side), np.float32)
    square[:u8.shape[0], :u8.shape[1]] = u8 / 255.0
    small = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    f = size / side
    # index -> working pixel (i + 0.5) s - 0.5 -> square pixel (p + 0.5) f - 0.5 -> normalised q 2 / (size - 1) - 1
    a = work.scale * f * 2 / (size - 1)
    b = (0.5 * work.scale * f - 0.5) * 2 / (size - 1) - 1
    to_norm = np.array([[a, 0, b], [0, a, b], [0, 0, 1.0]]) @ image.grid.physical_to_index_matrix()
    return torch.from_numpy(small)[None, None], to_norm


def _to_mm(points: np.ndarray, to_norm: np.ndarray) -> np.ndarray:
    back = np.linalg.inv(to_norm)
    return points @ back[:2, :2].T + back[:2, 2]


def run_correlation_stage(settings: CorrelationSettings, context: StageContext, state: StageState) -> StageOutcome:
    import cv2

    start = time.perf_counter()
    net, card = _network(settings)
    size = settings.size or net.size
    fixed, n_fixed = _square(context.fixed, settings, card, settings.fixed_polarity, size)
    moving, n_moving = _square(context.moving, settings, card, settings.moving_polarity, size)
    context.check_cancel()
    if settings.fit == "regression":
        with torch.no_grad():
            correlation = net.on_content(net.correlation(fixed, moving), fixed, moving)
            h_norm = net.soft_homography(correlation, cell_content(fixed, size // STRIDE))[0].double().numpy()
        h = np.linalg.inv(n_moving) @ h_norm @ n_fixed
        context.report({"model": settings.model, "level": 0, "iteration": 0, "loss": None})
        return StageOutcome(StageState(IdentityTransform(context.dim), HomographyTransform(h / h[2, 2])),
                            float("nan"), {"correlation_time_s": time.perf_counter() - start})
    f_cells, m_cells, scores = net.matches(fixed, moving)
    f_mm, m_mm = _to_mm(f_cells.double().numpy(), n_fixed), _to_mm(m_cells.double().numpy(), n_moving)
    cell_mm = 2.0 * STRIDE / (size - 1) / float(np.linalg.norm(n_moving[0, :2]))  # one cell, in moving mm
    h = inliers = None
    if len(f_mm) >= max(4, settings.min_inliers):
        cv2.setRNGSeed(int(torch.initial_seed() % (2**31)))
        h, inliers = cv2.findHomography(f_mm, m_mm, cv2.USAC_MAGSAC, settings.threshold_cells * cell_mm,
                                        maxIters=10000, confidence=0.9999)
    count = 0 if inliers is None or h is None else int(inliers.sum())
    if count < settings.min_inliers:
        raise InputError(f"the correlation network found no consistent set of matches ({count} inliers of "
                         f"{len(f_mm)} mutual matches; {settings.min_inliers} needed): the images may not show the "
                         "same retina")
    figures = {"correlation_matches": int(len(f_mm)), "correlation_inliers": count,
               "correlation_time_s": time.perf_counter() - start}
    context.report({"model": settings.model, "level": 0, "iteration": 0, "loss": None})
    return StageOutcome(StageState(IdentityTransform(context.dim), HomographyTransform(h)), float("nan"), figures)
