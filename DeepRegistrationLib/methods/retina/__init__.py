"""The retinal family: 2D fundus photographs and angiograms registered through global surface models
(homography, quadratic) estimated from keypoints on the enhanced image or on vessel maps.

Light at import: the stage kinds are declared in :mod:`.kinds`; OpenCV is imported by the
modules that use them (:mod:`.fundus`, :mod:`.keypoints`), when a retinal stage runs.
"""
