"""What a registration returns: the transform (fixed -> moving, LPS mm), the warped image on demand, figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..geometry import Grid
from ..image import Image
from ..metrics.evaluation import jacobian_determinant, jacobian_stats
from ..transforms import Transform
from ..warp import warp_image

__all__ = ["RegistrationResult"]



@dataclass
class RegistrationResult:
    """What a registration produced.

    Attributes:
        transform: resampling transform fixed -> moving (LPS mm).
        fixed_grid: the fixed image's grid (where ``warped()`` samples).
        moving: the moving image as given.
        figures: ``time_s``, ``device``, per stage final loss and time, ...
    """

    transform: Transform
    fixed_grid: Grid
    moving: Image
    figures: dict = field(default_factory=dict)

    def warped(self, interpolation: str = "linear") -> Image:
        """The moving image resampled through ``transform`` onto the fixed grid."""
        return warp_image(self.moving, self.transform, self.fixed_grid, interpolation)

    def jacobian(self) -> tuple[torch.Tensor, Grid, dict]:
        """Jacobian determinant of ``transform`` on the fixed image's grid, that grid, and its figures:
        ``folding_percent`` (det <= 0), ``std_log_jacobian``, min, max, mean. Also stored in ``figures`` as
        ``jacobian_*``. The definition ``deepreg evaluate`` uses (same grid, same differences), computed in
        slabs so that memory stays near 8 bytes a voxel."""
        grid = self.fixed_grid
        det = jacobian_determinant(self.transform, grid)
        stats = jacobian_stats(det)
        self.figures.update({f"jacobian_{k}": v for k, v in stats.items()})
        self.figures["jacobian_grid"] = "fixed image grid"
        return det, grid, stats
