"""Keypoint registration of two fundus images: detect and describe (SIFT or ORB, OpenCV), match (Lowe's ratio
test), a robust homography (MAGSAC++), then the chosen global model refined by guided matching (every fixed
keypoint looks for its partner near where the current model puts it) and a trimmed least-squares fit.

Keypoints are detected in each image's *original continuous index* ``(i, j) = (column, row)``; the stage converts
them to physical space (mm) through the images' grids before fitting, so the model is a fixed -> moving resampling
map. Several feature sets (e.g. SIFT on the enhanced image and ORB on the vessel map) can be pooled: their matches
meet in one robust fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ...transforms.polynomial import MIN_POINTS, fit_model
from .fundus import WorkingImage, _cv2
from .fundus_names import DETECTORS

__all__ = ["Features", "FeatureSet", "detect", "keypoint_network", "ratio_matches", "robust_fit", "DETECTORS",
           "FitResult"]



@dataclass
class Features:
    """Keypoints (original continuous index, (N, 2)) and their descriptors (N, D)."""

    points: np.ndarray
    descriptors: np.ndarray
    binary: bool

    def __len__(self) -> int:
        return len(self.points)


def detect(image: WorkingImage, u8: np.ndarray, detector: str = "sift", max_keypoints: int = 4000,
           model: str = "") -> Features:
    """Keypoints of ``u8`` (the working image, enhanced or a vessel map, uint8) inside its eroded field of view;
    ``detector: learned`` uses the keypoint network ``model``."""
    cv2 = _cv2()
    if detector == "learned":
        algorithm = None
    elif detector == "sift":
        algorithm = cv2.SIFT_create(nfeatures=max_keypoints)
    elif detector == "orb":
        algorithm = cv2.ORB_create(nfeatures=max_keypoints)
    else:
        raise InputError(f"unknown keypoint detector {detector!r} (choose from {DETECTORS})")
    erosion = max(3, int(round(0.02 * max(u8.shape))))
    from .fundus import field_of_view_mask

    inner = field_of_view_mask(image.array, erosion_px=erosion) & image.mask
    if algorithm is None:
        from .keypoint_net import detect_learned

        points, descriptors = detect_learned(keypoint_network(model), u8, inner, max_keypoints)
        return Features(image.to_original(points), descriptors, False)
    keypoints, descriptors = algorithm.detectAndCompute(u8, inner.astype(np.uint8) * 255)
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2)), np.zeros((0, 32), np.uint8), detector == "orb")
    points = image.to_original(np.array([k.pt for k in keypoints], dtype=np.float64))
    return Features(points, descriptors, detector == "orb")


def keypoint_network(name: str):
    """The keypoint network of a model name or folder (checksum verified; kept for the process)."""
    from ...io.models import cached_model, find_model

    net, _ = cached_model(find_model(name), "cpu", network="KeypointNet")
    return net


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
class FeatureSet:
    """Keypoints of both images from one detector on one kind of feature image, their points in mm, and the
    ratio-test matches ``(i_fixed, i_moving)``."""

    fixed: Features
    moving: Features
    fixed_mm: np.ndarray
    moving_mm: np.ndarray
    matches: tuple[np.ndarray, np.ndarray]


@dataclass
class FitResult:
    """The fitted model (fixed -> moving, mm), the inlier correspondences (mm) and figures."""

    transform: object
    fixed_points: np.ndarray
    moving_points: np.ndarray
    figures: dict = field(default_factory=dict)


def _descriptor_distances(a: np.ndarray, b: np.ndarray, binary: bool) -> np.ndarray:
    """Row-wise distances of descriptor pairs ``a[k]``, ``b[k]``: Hamming for binary ones, else Euclidean."""
    if binary:
        return np.unpackbits(a ^ b, axis=1).sum(1).astype(np.float32)
    return np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=1)


def _guided_matches(feature_set: FeatureSet, transform, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Correspondences (mm) found by looking, for every fixed keypoint, among the moving keypoints within
    ``radius_mm`` of where ``transform`` puts it: the best descriptor unless a second one is nearly as good."""
    from scipy.spatial import cKDTree

    pf, pm = feature_set.fixed_mm, feature_set.moving_mm
    if len(pf) == 0 or len(pm) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    predicted = transform.map_points(pf)
    ok = np.flatnonzero(np.isfinite(predicted).all(1))
    candidates = cKDTree(pm).query_ball_point(predicted[ok], radius_mm)
    counts = np.array([len(c) for c in candidates], int)
    if counts.sum() == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    rows = np.repeat(ok, counts)
    cols = np.concatenate([np.asarray(c, int) for c in candidates if c])
    d = _descriptor_distances(feature_set.fixed.descriptors[rows], feature_set.moving.descriptors[cols],
                              feature_set.fixed.binary)
    order = np.lexsort((d, rows))  # by fixed keypoint, then distance
    rows, cols, d = rows[order], cols[order], d[order]
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    has_second = np.r_[first[1:], len(rows)] - first > 1
    second = np.where(has_second, d[np.minimum(first + 1, len(d) - 1)], np.inf)
    keep = first[d[first] < 0.9 * second]  # the best candidate, unless a second one is nearly as good
    return pf[rows[keep]], pm[cols[keep]]


def robust_fit(model: str, sets: list[FeatureSet], threshold_mm: float, guided_radius_mm: float, rounds: int = 3,
               seed: int = 0, min_inliers: int = 25, min_inlier_fraction: float = 0.1, start=None,
               start_radius_mm: float = 0.0) -> FitResult:
    """Fit ``model`` to the ratio-test matches of every feature set, pooled (mm): MAGSAC++ homography first, then
    ``rounds`` of guided matching within ``guided_radius_mm`` of the model's prediction (in each set) and a fit to
    the correspondences within ``threshold_mm`` (trimmed least squares, repeated until the inlier set settles).

    The MAGSAC++ consensus must hold ``min_inliers`` matches and ``min_inlier_fraction`` of them: unrelated images
    (or noise) still give a few percent of chance inliers, real pairs of the same eye tens of percent.

    With a ``start`` transform (an earlier estimate), the global matching is replaced by guided matching
    within ``start_radius_mm`` of where ``start`` puts each keypoint; MAGSAC++ then runs on those candidates."""
    cv2 = _cv2()
    need = max(MIN_POINTS[model], 4)
    if start is not None:
        found = [_guided_matches(fs, start, start_radius_mm) for fs in sets]
        fixed_mm = np.concatenate([f for f, _ in found]) if found else np.zeros((0, 2))
        moving_mm = np.concatenate([m for _, m in found]) if found else np.zeros((0, 2))
    else:
        fixed_mm = np.concatenate([fs.fixed_mm[fs.matches[0]] for fs in sets]) if sets else np.zeros((0, 2))
        moving_mm = np.concatenate([fs.moving_mm[fs.matches[1]] for fs in sets]) if sets else np.zeros((0, 2))
    if len(fixed_mm) < need:
        raise InputError(f"only {len(fixed_mm)} keypoint matches passed the ratio test (a {model} needs {need}): the "
                         "images may not overlap, or try the vessel-map preset (retina-multimodal)")
    cv2.setRNGSeed(seed)
    homography, inliers = cv2.findHomography(fixed_mm.astype(np.float64), moving_mm.astype(np.float64),
                                             cv2.USAC_MAGSAC, threshold_mm, maxIters=10000, confidence=0.9999)
    count = 0 if homography is None or inliers is None else int(inliers.sum())
    if count < max(need, min_inliers) or count < min_inlier_fraction * len(fixed_mm):
        raise InputError(f"no consistent set of keypoint matches ({count} inliers of {len(fixed_mm)} matches; at least "
                         f"{max(need, min_inliers)} and {min_inlier_fraction:.0%} are needed): the images may not show "
                         "the same retina, or overlap too little")
    inliers = inliers.ravel().astype(bool)
    f_in, m_in = fixed_mm[inliers], moving_mm[inliers]
    transform = fit_model(model, f_in, m_in)
    figures = {"start_matches" if start is not None else "ratio_matches": int(len(fixed_mm)),
               "ransac_inliers": int(inliers.sum())}
    for _ in range(rounds):
        found = [_guided_matches(fs, transform, guided_radius_mm) for fs in sets]
        a = np.concatenate([f for f, _ in found])
        b = np.concatenate([m for _, m in found])
        if len(a) < need:
            break
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
    if rounds:
        figures["guided_inliers"] = int(len(f_in))
    residual = np.linalg.norm(transform.map_points(f_in) - m_in, axis=1)
    figures["inlier_residual_median_mm"] = float(np.median(residual))
    return FitResult(transform, f_in, m_in, figures)
