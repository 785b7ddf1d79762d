"""Names the retinal settings accept (no imports: parsed with a preset, before OpenCV is needed)."""

#: ``learned``: the keypoint network (``keypoint_model``), on the enhanced image only.
DETECTORS = ("sift", "orb", "learned")
POLARITIES = ("auto", "dark", "bright")
#: The global models a keypoint stage fits (:data:`DeepRegistrationLib.transforms.polynomial.MODELS`; a test
#: keeps the two equal, this copy lets a preset be parsed without importing torch).
TRANSFORM_MODELS = ("affine", "homography", "quadratic")
