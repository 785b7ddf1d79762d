"""Settings of the ``voxelmorph`` stage and its registration (light: no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError
from ..registry import StageKind, register_stage_kind
from ..stage import StageSettings, check_flag, check_number

__all__ = ["VoxelMorphSettings", "DEFAULT_PASS_STEP"]

DEFAULT_PASS_STEP = 0.4  # damping of the network passes after the first (inference.predict_transform)


@dataclass
class VoxelMorphSettings(StageSettings):
    """A trained network predicts the deformation on its own grid (no pyramid, no optimiser); an ``svf`` stage
    after it starts from the network's velocity (instance optimisation).

    Attributes:
        network: a model name (a bundled model ``<name>``, ``$DEEPREG_MODELS``) or a model folder.
        mirror_average: also predict on the pair mirrored left-right (both images) and average the two fields
            (the mirrored one mirrored back). For near-symmetric anatomy (brain) the mirrored pair is as
            plausible as the original, so this halves the network's independent errors at the cost of a second
            forward pass.
        passes: network passes (1-8). Each pass after the first gives the network the moving image seen through
            the deformation so far and composes ``pass_step`` x its prediction onto it (damped recursive
            refinement, :func:`~.inference.predict_transform`).
        pass_step: the fraction (0, 1] of each later pass's prediction that is applied.
        map_contrast: first map the moving image into the fixed image's contrast by the conditional mean
            ``E[fixed | moving]`` estimated through the linear alignment (the same mapping as the ``mapped-lncc``
            similarity, :func:`~DeepRegistrationLib.methods.pyramid.mapped_image`), so a network trained on
            one contrast (T1) registers another (PD, T2) to it: classical translation, then monomodal prediction.
            Needs a good linear alignment (a multimodal rigid/affine stage before it).
        mapped_image: which image ``map_contrast`` maps into the other's contrast: ``"moving"`` (the default: the
            network's contrast is the fixed image's) or ``"fixed"`` (``E[moving | fixed]`` applied to the fixed
            image: the network's contrast is the moving image's, e.g. a T1 atlas registered onto a PD or T2 scan).
        mapping_homogeneity: how much less the voxels on an edge of either image count in ``map_contrast``'s
            estimate of the mapping (``homogeneity`` of :func:`~DeepRegistrationLib.methods.pyramid.mapped_image`;
            0: every voxel alike). Edges are where the misalignment left before the network pairs one tissue with
            its neighbour.
    """

    model: str = "voxelmorph"
    network: str = ""
    mirror_average: bool = False
    passes: int = 1
    pass_step: float = DEFAULT_PASS_STEP
    map_contrast: bool = False
    mapped_image: str = "moving"
    mapping_homogeneity: float = 1.0

    def validate(self) -> "VoxelMorphSettings":
        if self.model != "voxelmorph":
            raise InputError(f"a network stage's model is 'voxelmorph', got {self.model!r}")
        if not isinstance(self.network, str) or not self.network:
            raise InputError("a voxelmorph stage needs 'network' (a model name or folder)")
        check_flag("mirror_average", self.mirror_average)
        check_flag("map_contrast", self.map_contrast)
        if self.mapped_image not in ("moving", "fixed"):
            raise InputError(f"mapped_image must be 'moving' or 'fixed', got {self.mapped_image!r}")
        if self.mapped_image == "fixed" and not self.map_contrast:
            raise InputError("mapped_image 'fixed' needs map_contrast: true (nothing is mapped without it)")
        check_number("mapping_homogeneity", self.mapping_homogeneity, 0.0, 100.0)
        check_number("passes", self.passes, 1, 8, integer=True)
        check_number("pass_step", self.pass_step, 0.0, 1.0, low_open=True)
        return self


register_stage_kind(StageKind("voxelmorph", VoxelMorphSettings,
                              "DeepRegistrationLib.methods.voxelmorph.inference:run_voxelmorph_stage", "deformable",
                              check="DeepRegistrationLib.methods.voxelmorph.inference:check_stage_inputs",
                              family="voxelmorph"))
