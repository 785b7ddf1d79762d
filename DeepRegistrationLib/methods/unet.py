"""The VoxelMorph U-Net in plain PyTorch, module for module and key for key MONAI's ``VoxelMorphUNet``: the one
U-Net of the method families (VoxelMorph and the supervised network's flow; the retinal vessel network with a
one-channel head), so it lives in the shared core.

Why not MONAI's class itself: importing ``monai`` loads every MONAI subpackage (data, transforms, apps,
metrics, ...), which takes 1.8-2.6 s on 2 CPU cores, a quarter of the 10 s budget of a cold ``deepreg``
registration with the bundled model. Inference needs only this U-Net, so the library builds it here and
MONAI is imported only to train (``VoxelMorphNet.forward``: MONAI's scaling-and-squaring and warp).

The layout is MONAI 1.6's (``monai/networks/nets/voxelmorph.py``) with its defaults as VoxelMorph uses them:
3x3(x3) convolutions with bias, LeakyReLU(0.2) after every convolution but the flow head, optional instance
normalisation (no affine parameters) before the activation, 2x max pooling down, nearest-neighbour 2x
upsampling up, and skip connections that concatenate ``[encoder features, decoder features]`` along the
channels. The modules are nested and named as MONAI's (``net.0.1.submodule.0.1.conv.weight``, ...), so a
state dict of either class loads into the other with ``strict=True``; ``Testing`` checks that both give the
same output for every architecture in 2D and 3D. Not supported (VoxelMorph does not use them): strided
convolutions instead of pooling, dropout, other kernel sizes or activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvBlock", "SkipConnection", "VoxelMorphUNet"]


class ConvBlock(nn.Module):
    """Convolution (3-wide, zero padding, bias) -> instance norm (optional) -> LeakyReLU(0.2) (optional).

    Named as MONAI's ``Convolution`` (``conv``, then ``adn`` holding ``N`` and ``A``); the flow head is built
    with neither, as the papers' last layer."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, norm: bool = False, act: bool = True) -> None:
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel_size=3, padding=1)
        self.adn = nn.Sequential()
        if norm:  # no affine parameters, as MONAI's instance norm
            self.adn.add_module("N", (nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d)(out_channels))
        if act:
            self.adn.add_module("A", nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adn(self.conv(x))


class SkipConnection(nn.Module):
    """``cat([x, submodule(x)], dim=1)``: the U-Net's skip (MONAI's ``SkipConnection`` in "cat" mode)."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class VoxelMorphUNet(nn.Module):
    """The VoxelMorph U-Net: ``(N, in_channels, *shape)`` -> ``(N, out_channels, *shape)``.

    ``channels`` lists the (down, up) channel pairs from the top level to the bottom (one more pooling per
    pair); ``unet_out_channels`` is the width of the top up layer, followed by ``final_conv_channels`` and a
    head of ``out_channels`` (default ``dim``: VoxelMorph's flow; 1 for a segmentation logit, as the retinal
    vessel network uses it). Every spatial size must be divisible by ``2 ** (len(channels) // 2)``.
    """

    def __init__(self, dim: int, in_channels: int, unet_out_channels: int, channels: Sequence[int],
                 final_conv_channels: Sequence[int], norm: str | None = None, out_channels: int | None = None) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if len(channels) < 2 or len(channels) % 2:
            raise ValueError(f"channels must be (down, up) pairs, got {tuple(channels)}")
        if norm not in (None, "instance"):
            raise ValueError(f"norm must be None or 'instance', got {norm!r}")
        self.dim = dim
        use_norm = norm == "instance"
        pool = nn.MaxPool3d if dim == 3 else nn.MaxPool2d

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(dim, cin, cout, norm=use_norm)

        def down(cin: int, cout: int, is_top: bool) -> nn.Module:
            return block(cin, cout) if is_top else nn.Sequential(pool(kernel_size=2, stride=2), block(cin, cout))

        def level(cin: int, cout: int, rest: Sequence[int], is_top: bool) -> nn.Module:
            down_c, up_c = rest[0], rest[1]
            if len(rest) > 2:
                sub = level(down_c, up_c, rest[2:], is_top=False)
            else:  # the bottleneck: one more down layer, then back up
                sub = nn.Sequential(down(down_c, up_c, is_top=False), _Upsample(dim))
            first = down(cin, down_c, is_top)  # built in MONAI's order: a seed gives MONAI's initial weights
            up: nn.Module = block(down_c + up_c, cout)
            if not is_top:
                up = nn.Sequential(up, _Upsample(dim))
            return nn.Sequential(first, SkipConnection(sub), up)

        unet = level(in_channels, unet_out_channels, tuple(channels), is_top=True)
        head = nn.Sequential()
        width = unet_out_channels
        for i, c in enumerate(final_conv_channels):
            head.add_module(f"final_conv_{i}", block(width, c))
            width = c
        head.add_module("final_conv_out", ConvBlock(dim, width, out_channels or dim, norm=False, act=False))
        self.net = nn.Sequential(unet, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Upsample(nn.Module):
    """2x nearest-neighbour upsampling, named as MONAI's ``UpSample`` (``upsample_non_trainable``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.upsample_non_trainable = nn.Upsample(scale_factor=(2.0,) * dim, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample_non_trainable(x)
