"""The dense refinement network for retinal vessel maps: the residual displacement left by a global model.

``(fixed, warped)`` vessel maps ``(N, 1, H, W)`` in [0, 1], the moving map already resampled onto the fixed pixels
through a global transform (the correlation network's homography, or any earlier result) -> a displacement
``(N, 2, H, W)`` in fixed pixels, ``(dx, dy)`` (x along columns, y along rows), such that
``warped(p + flow(p)) = fixed(p)``. The body is the library's U-Net
(:class:`~DeepRegistrationLib.methods.unet.VoxelMorphUNet`, two input channels, a two-channel flow head). The flow is
predicted at every pixel and smoothed by the training's regulariser only; H and W must be divisible by
:attr:`FlowRefinementNet.multiple` (:func:`predict_flow` pads).

Together with the correlation network this is the second source document's registration network: a 4D
correlation volume of deep features giving a global homography, then a dense refinement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..unet import VoxelMorphUNet

__all__ = ["FlowRefinementNet", "warp_by_flow", "predict_flow"]


class FlowRefinementNet(nn.Module):
    """See the module docstring; ``config`` holds the constructor arguments (what a model card records)."""

    def __init__(self, channels: tuple = (16, 32, 32, 32, 32, 32, 32, 32), unet_out_channels: int = 16,
                 final_conv_channels: tuple = (16,)) -> None:
        super().__init__()
        self.config = {"channels": list(channels), "unet_out_channels": unet_out_channels,
                       "final_conv_channels": list(final_conv_channels)}
        self.unet = VoxelMorphUNet(2, 2, unet_out_channels, channels, final_conv_channels, norm="instance",
                                   out_channels=2)
        head = self.unet.net[1].final_conv_out.conv  # start at the identity, as VoxelMorph's flow head
        nn.init.normal_(head.weight, 0.0, 1e-5)
        nn.init.zeros_(head.bias)
        self.multiple = 2 ** (len(channels) // 2)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([fixed, warped], 1))


def warp_by_flow(moving: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``moving`` ``(N, C, H, W)`` sampled at ``p + flow(p)`` (``flow`` ``(N, 2, H, W)`` pixels, (dx, dy)), zero
    outside, and the ``(N, 1, H, W)`` mask of the pixels that land inside it; differentiable in both."""
    n, _, h, w = moving.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    y = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([x, y], -1)
    warped = F.grid_sample(moving, grid, align_corners=True, padding_mode="zeros")
    inside = ((grid.detach().abs() <= 1).all(-1, keepdim=True)).permute(0, 3, 1, 2).to(moving.dtype)
    return warped, inside


@torch.no_grad()
def predict_flow(net: FlowRefinementNet, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """The network's flow ``(2, H, W)`` (pixels) for one pair of maps ``(H, W)``, padded (bottom, right) to the
    network's multiple and cut back."""
    h, w = fixed.shape
    m = net.multiple
    pad = (0, -w % m, 0, -h % m)
    device = next(net.parameters()).device
    pair = [F.pad(x.float()[None, None].to(device), pad) for x in (fixed, warped)]
    return net(*pair)[0, :, :h, :w].cpu()
