"""Registration networks (torch modules on tensors of a fixed model grid, voxel units).

The bridge to physical space (LPS mm fields on the images' grids) is :func:`voxel_field_to_physical`.
"""

from .model_io import load_model, save_model
from .training import Subject, TrainConfig, train_voxelmorph
from .voxelmorph import ARCHITECTURES, VoxelMorphNet, voxel_field_to_physical

__all__ = ["ARCHITECTURES", "VoxelMorphNet", "voxel_field_to_physical", "save_model", "load_model", "Subject",
           "TrainConfig", "train_voxelmorph"]
