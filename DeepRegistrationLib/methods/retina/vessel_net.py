"""A small U-Net for retinal vessel maps (2D): ``(N, 1, H, W)`` image in [0, 1] -> ``(N, 1, H, W)`` vessel logit.

The U-Net is the library's one (:class:`~DeepRegistrationLib.methods.unet.VoxelMorphUNet`, MONAI's
layout) with a one-channel head. Trained on pseudo-labels (:mod:`.vessel_training`), with the input randomly
inverted, it maps the dark vessels of a colour photograph and the bright ones of an angiogram alike: no polarity
to choose. H and W must be divisible by 8 (:func:`vessel_probability` pads).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..unet import VoxelMorphUNet

__all__ = ["VesselNet", "vessel_probability"]


class VesselNet(nn.Module):
    """The vessel U-Net; ``config`` holds its constructor arguments (what a model card records)."""

    def __init__(self, channels: tuple = (16, 32, 32, 32, 32, 32), unet_out_channels: int = 16,
                 final_conv_channels: tuple = (16,)) -> None:
        super().__init__()
        self.config = {"channels": list(channels), "unet_out_channels": unet_out_channels,
                       "final_conv_channels": list(final_conv_channels)}
        self.unet = VoxelMorphUNet(2, 1, unet_out_channels, channels, final_conv_channels, norm="instance",
                                   out_channels=1)
        self.multiple = 2 ** (len(channels) // 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(image)


@torch.no_grad()
def vessel_probability(net: VesselNet, array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The network's vessel probability (float32 [0, 1]) of a working image ``array`` (float [0, 1], ``(H, W)``),
    0 outside ``mask``; the image is normalised to its field of view's 1-99th percentiles first, as in training."""
    values = array[mask] if mask is not None and mask.any() else array.ravel()
    lo, hi = np.percentile(values, [1, 99])
    x = np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    h, w = x.shape
    m = net.multiple
    padded = np.pad(x, ((0, -h % m), (0, -w % m)))
    device = next(net.parameters()).device
    logit = net(torch.from_numpy(padded)[None, None].to(device))[0, 0, :h, :w]
    probability = torch.sigmoid(logit).cpu().numpy()
    if mask is not None:
        probability[~mask] = 0
    return probability
