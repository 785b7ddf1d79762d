"""VoxelMorph (Balakrishnan et al., CVPR 2018 / IEEE TMI 2019; Dalca et al., MICCAI 2018): MONAI's design.

``VoxelMorphNet(dim, "vm1" | "vm2", diffeomorphic=..., half_res=...)`` takes ``moving`` and ``fixed``
tensors ``(N, 1, *shape)`` on one grid and returns the warped moving image and the displacement
``(N, dim, *shape)`` in **voxels**, channel ``k`` along tensor axis ``k`` (array order), pull-back:
``warped(x) = moving(x + u(x))`` (MONAI's ``Warp`` convention).
:func:`~DeepRegistrationLib.transforms.voxel.voxel_field_to_physical` turns such a field into the library's
:class:`DisplacementField` (LPS mm) on the images' grid.

The U-Net is :class:`.unet.VoxelMorphUNet`, MONAI's ``VoxelMorphUNet`` restated in plain PyTorch with the
same modules and state-dict keys (tested equal to MONAI's output), so that neither inference nor training
imports MONAI. :meth:`VoxelMorphNet.forward` (training) integrates the velocity with the library's own scaling
and squaring (:func:`~DeepRegistrationLib.transforms.voxel.integrate_voxel_velocity`, the one the inference's
:class:`StationaryVelocityField` applies: the field is extended by its border values, where MONAI's ``DVF2DDF``
pads with zeros) and warps with zero padding, as MONAI's ``VoxelMorph`` does.

Differences from the papers (those of MONAI's ``VoxelMorphUNet`` / ``VoxelMorph``):

* encoder 16-32-32-32 with max pooling and nearest-neighbour upsampling as in the papers; MONAI's U-Net
  ends with ``unet_out_channels`` = 32 at full resolution followed by the final convolutions, so VM-1's
  decoder is 32-32-32-32 + 8-8 (paper: 32-32-32-8-8) and VM-2's 32-32-32-32 + 16-16 (paper: 32-32-32-32-32-16-16);
* the diffeomorphic variant integrates the velocity by ``integration_steps`` squarings (7 by default as in the
  paper), optionally at half resolution (``half_res``);
* LeakyReLU slope 0.2 and the flow head's small-normal initialisation follow the papers.
* ``vm1-lite-in`` (not in the papers) adds instance normalisation after every convolution except the flow
  head. Without it, a step moves the output by ~0.01 voxel (unnormalised activations are small), and on 2 CPU
  cores 1200 steps of augmented pairs left the training Dice where it started; with it, the same two training
  pairs gain 0.06 Dice in 80 steps (README, "Learned registration").
"""

from __future__ import annotations

import torch
from torch import nn

import torch.nn.functional as F

from ...errors import InputError
from ...transforms.voxel import integrate_voxel_velocity, warp_voxels
from ..unet import VoxelMorphUNet

__all__ = ["ARCHITECTURES", "VoxelMorphNet"]

ARCHITECTURES: dict[str, dict] = {
    "vm1": {"channels": (16, 32, 32, 32, 32, 32), "unet_out_channels": 32, "final_conv_channels": (8, 8)},
    "vm2": {"channels": (16, 32, 32, 32, 32, 32), "unet_out_channels": 32, "final_conv_channels": (16, 16)},
    # VM-1 with MONAI's extra full-resolution layer narrowed to 16 channels: the full-resolution part is then
    # 16 + 8-8 as in the paper's VM-1 head, and a step costs 40 % of "vm1"
    "vm1-lite": {"channels": (16, 32, 32, 32, 32, 32), "unet_out_channels": 16, "final_conv_channels": (8, 8)},
    # vm1-lite with instance normalisation (flow head excepted): trains far faster from scratch (the bundled model)
    "vm1-lite-in": {"channels": (16, 32, 32, 32, 32, 32), "unet_out_channels": 16, "final_conv_channels": (8, 8),
                    "norm": "instance"},
}


class VoxelMorphNet(nn.Module):
    """VoxelMorph U-Net + spatial transformer (+ scaling and squaring when ``diffeomorphic``).

    Inputs must have every spatial size divisible by 8 (three poolings).
    """

    def __init__(self, dim: int = 3, architecture: str = "vm2", diffeomorphic: bool = True,
                 integration_steps: int = 7, half_res: bool = False) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"VoxelMorph is 2D or 3D, got dim={dim}")
        if architecture not in ARCHITECTURES:
            raise InputError(f"unknown VoxelMorph architecture {architecture!r} (choose from {sorted(ARCHITECTURES)})")
        if half_res and not diffeomorphic:
            raise InputError("half_res applies to the diffeomorphic variant (integration at half resolution)")
        self.config = {"dim": dim, "architecture": architecture, "diffeomorphic": bool(diffeomorphic),
                       "integration_steps": int(integration_steps) if diffeomorphic else 0, "half_res": bool(half_res)}
        backbone = VoxelMorphUNet(dim, in_channels=2, **ARCHITECTURES[architecture])
        # the flow head has no normalisation (MONAI's would fix the field's spread per channel) and starts near
        # the identity, as in the papers
        flow = backbone.net[1].final_conv_out.conv
        nn.init.normal_(flow.weight, 0.0, 1e-5)
        nn.init.zeros_(flow.bias)
        self.net = _Network(backbone, self.config["integration_steps"], bool(half_res), dim)

    @property
    def dim(self) -> int:
        return self.config["dim"]

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(warped moving, displacement in voxels)`` for ``(N, 1, *shape)`` inputs (MONAI's ``VoxelMorph``)."""
        self.forward_check(moving, fixed)
        return self.net(moving, fixed)

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The backbone's output ``(N, dim, *shape)`` in voxels: the stationary velocity of the diffeomorphic
        variant (its displacement is the scaling-and-squaring exponential of it), else the displacement."""
        self.forward_check(moving, fixed)
        return self.net.backbone(torch.cat([moving, fixed], dim=1))

    def forward_check(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        """The shape checks of :meth:`forward` (one clear message for every misuse)."""
        if moving.shape != fixed.shape or moving.dim() != self.dim + 2 or moving.shape[1] != 1:
            raise InputError(f"VoxelMorph {self.dim}D needs moving and fixed of the same shape (N, 1, *{self.dim}D "
                             f"shape); got {tuple(moving.shape)} and {tuple(fixed.shape)}")
        bad = [n for n in moving.shape[2:] if n % 8]
        if bad:
            raise InputError(f"every spatial size must be divisible by 8 (three poolings); got {tuple(moving.shape[2:])}")


class _Network(nn.Module):
    """Holds the U-Net as ``backbone`` (state-dict keys ``net.backbone.*``, as MONAI's ``VoxelMorph``) and runs
    the training forward: velocity -> displacement -> warped moving image."""

    def __init__(self, backbone: nn.Module, integration_steps: int, half_res: bool, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.integration_steps, self.half_res, self.spatial_dims = integration_steps, half_res, dim

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone(torch.cat([moving, fixed], dim=1))
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        if self.half_res:
            x = F.interpolate(x, scale_factor=0.5, mode=mode, align_corners=True) * 2.0
        if self.integration_steps > 0:
            x = integrate_voxel_velocity(x, self.integration_steps)
        if self.half_res:
            x = F.interpolate(x * 0.5, scale_factor=2.0, mode=mode, align_corners=True)
        return warp_voxels(moving, x, "bilinear", "zeros"), x
