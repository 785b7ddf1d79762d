"""Keypoint registration of two fundus images: detect and describe (SIFT or ORB, OpenCV), match (Lowe's ratio
test), a robust homography (MAGSAC++), then the chosen global model refined by guided matching (every fixed
keypoint looks for its partner near where the current model puts it) and a trimmed least-squares fit.

Points are in each image's *original continuous index* ``(i, j) = (column, row)``; the stage converts them to
physical space (mm) through the images' grids before fitting, so the model is a fixed -> moving resampling map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ...transforms.polynomial import MIN_POINTS, fit_model
from .fundus import WorkingImage, _cv2
from .fundus_names import DETECTORS

__all__ = ["Features", "detect", "ratio_matches", "robust_fit", "DETECTORS", "FitResult"]



@dataclass
class Features:
    """Keypoints (original continuous index, (N, 2)) and their descriptors (N, D)."""

    points: np.ndarray
    descriptors: np.ndarray
    binary: bool

    def __len__(self) -> int:
        return len(self.points)


def detect(image: WorkingImage, u8: np.ndarray, detector: str = "sift", max_keypoints: int = 4000) -> Features:
    """Keypoints of ``u8`` (the working image, enhanced or a vessel map, uint8) inside its eroded field of view."""
    cv2 = _cv2()
    if detector == "sift":
        algorithm = cv2.SIFT_create(nfeatures=max_keypoints)
    elif detector == "orb":
        algorithm = cv2.ORB_create(nfeatures=max_keypoints)
    else:
        raise InputError(f"unknown keypoint detector {detector!r} (choose from {DETECTORS})")
    erosion = max(3, int(round(0.02 * max(u8.shape))))
    from .fundus import field_of_view_mask

    inner = field_of_view_mask(image.array, erosion_px=erosion) & image.mask
    keypoints, descriptors = algorithm.detectAndCompute(u8, inner.astype(np.uint8) * 255)
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2)), np.zeros((0, 32), np.uint8), detector == "orb")
    points = image.to_original(np.array([k.pt for k in keypoints], dtype=np.float64))
    return Features(points, descriptors, detector == "orb")


def ratio_matches(fixed: Features, moving: Features, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(i_fixed, i_moving)`` of the pairs passing Lowe's ratio test (nearest < ratio x second nearest)."""
    if len(fixed) < 2 or len(moving) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    cv2 = _cv2()
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if fixed.binary else cv2.NORM_L2)
    pairs = matcher.knnMatch(fixed.descriptors, moving.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    return np.array([g.queryIdx for g in good], int), np.array([g.trainIdx for g in good], int)


@dataclass
class FitResult:
    """The fitted model (fixed -> moving, mm), the inlier correspondences (mm) and figures."""

    transform: object
    fixed_points: np.ndarray
    moving_points: np.ndarray
    figures: dict = field(default_factory=dict)


def robust_fit(model: str, fixed_mm: np.ndarray, moving_mm: np.ndarray, fixed: Features, moving: Features,
               fixed_to_mm, moving_to_mm, threshold_mm: float, guided_radius_mm: float, rounds: int = 3,
               seed: int = 0) -> FitResult:
    """Fit ``model`` to ratio-test matches ``fixed_mm -> moving_mm`` (mm): MAGSAC++ homography first, then
    ``rounds`` of guided matching within ``guided_radius_mm`` of the model's prediction and a fit to the
    correspondences within ``threshold_mm`` (trimmed least squares, repeated until the inlier set settles).
    ``fixed_to_mm`` / ``moving_to_mm`` map a Features' points (original index) to mm."""
    cv2 = _cv2()
    need = max(MIN_POINTS[model], 4)
    if len(fixed_mm) < need:
        raise InputError(f"only {len(fixed_mm)} keypoint matches passed the ratio test (a {model} needs {need}): the "
                         "images may not overlap, or try the vessel-map preset (retina-multimodal)")
    cv2.setRNGSeed(seed)
    homography, inliers = cv2.findHomography(fixed_mm.astype(np.float64), moving_mm.astype(np.float64),
                                             cv2.USAC_MAGSAC, threshold_mm, maxIters=10000, confidence=0.9999)
    if homography is None or inliers is None or int(inliers.sum()) < need:
        raise InputError(f"no consistent set of keypoint matches ({0 if inliers is None else int(inliers.sum())} "
                         f"inliers of {len(fixed_mm)} matches; a {model} needs {need})")
    inliers = inliers.ravel().astype(bool)
    f_in, m_in = fixed_mm[inliers], moving_mm[inliers]
    transform = fit_model(model, f_in, m_in)
    figures = {"ratio_matches": int(len(fixed_mm)), "ransac_inliers": int(inliers.sum())}
    pf, pm = fixed_to_mm(fixed.points), moving_to_mm(moving.points)
    if rounds and len(pm) >= need:
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING if fixed.binary else cv2.NORM_L2)
        for _ in range(rounds):
            predicted = transform.map_points(pf)
            # candidates: the moving keypoints within the radius of each fixed keypoint's predicted position
            near = np.zeros((len(pf), len(pm)), np.uint8)
            for start in range(0, len(pf), 1024):
                block = predicted[start:start + 1024]
                d2 = ((block[:, None, :] - pm[None, :, :]) ** 2).sum(-1)
                near[start:start + 1024] = np.nan_to_num(d2, nan=np.inf) < guided_radius_mm**2
            pairs = matcher.knnMatch(fixed.descriptors, moving.descriptors, k=2, mask=near)
            index_f, index_m = [], []
            for p in pairs:  # the best candidate, unless a second one is nearly as good
                if p and (len(p) == 1 or p[0].distance < 0.9 * p[1].distance):
                    index_f.append(p[0].queryIdx)
                    index_m.append(p[0].trainIdx)
            if len(index_f) < need:
                break
            a, b = pf[index_f], pm[index_m]
            keep = np.ones(len(a), bool)
            for _ in range(10):
                residual = np.linalg.norm(transform.map_points(a) - b, axis=1)
                new_keep = residual < threshold_mm
                if new_keep.sum() < need:
                    break
                transform = fit_model(model, a[new_keep], b[new_keep])
                if (new_keep == keep).all():
                    break
                keep = new_keep
            f_in, m_in = a[keep], b[keep]
        figures["guided_inliers"] = int(len(f_in))
    residual = np.linalg.norm(transform.map_points(f_in) - m_in, axis=1)
    figures["inlier_residual_median_mm"] = float(np.median(residual))
    return FitResult(transform, f_in, m_in, figures)
