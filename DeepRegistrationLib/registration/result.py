"""What a registration returns: the transform (fixed -> moving, LPS mm), the warped image on demand, figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..geometry import Grid
from ..image import Image
from ..metrics.evaluation import jacobian_determinant, jacobian_stats
from ..transforms import Transform
from ..warp import warp_image

__all__ = ["RegistrationResult", "JACOBIAN_MAX_VOXELS"]

JACOBIAN_MAX_VOXELS = 4_000_000


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

    def jacobian(self, max_voxels: int = JACOBIAN_MAX_VOXELS) -> tuple[torch.Tensor, Grid, dict]:
        """Jacobian determinant of ``transform`` on the fixed grid (coarsened 2x per axis above
        ``max_voxels``), that grid, and its figures: ``folding_percent`` (det <= 0), ``std_log_jacobian``,
        min, max, mean. Also stored in ``figures`` as ``jacobian_*``."""
        grid = self.fixed_grid
        if grid.num_voxels > max_voxels:
            grid = grid.with_spacing([2 * s for s in grid.spacing])
        det = jacobian_determinant(self.transform, grid)
        stats = jacobian_stats(det)
        self.figures.update({f"jacobian_{k}": v for k, v in stats.items()})
        return det, grid, stats
