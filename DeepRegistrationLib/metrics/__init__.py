"""Similarity losses and regularisers (differentiable, for optimisation and training) and evaluation metrics (in mm)."""

from .evaluation import (jacobian_determinant, jacobian_stats, label_values, overlap, surface_distances,
                         target_registration_error)
from .regularisers import diffusion_regulariser, diffusion_regulariser_batch
from .similarity import (SIMILARITIES, LNCCLoss, MappedLNCCLoss, MINDSSCLoss, MSELoss, MutualInformationLoss,
                         NCCLoss, box_filter, make_similarity, mind_ssc)

__all__ = ["MSELoss", "NCCLoss", "LNCCLoss", "MappedLNCCLoss", "MutualInformationLoss", "MINDSSCLoss", "mind_ssc",
           "box_filter", "make_similarity", "SIMILARITIES", "overlap", "surface_distances", "target_registration_error",
           "jacobian_determinant", "jacobian_stats", "label_values", "diffusion_regulariser",
           "diffusion_regulariser_batch"]
