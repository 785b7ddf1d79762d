"""Image-to-image translation networks, 2D and 3D: a ResNet generator and a PatchGAN discriminator.

:class:`TranslationGenerator` is the CycleGAN generator (Zhu et al. 2017, after Johnson et al. 2016): a 7-wide
convolution, two stride-2 down-samplings, ``blocks`` residual blocks at a quarter of the resolution, two
up-samplings (nearest-neighbour 2x + 3-wide convolution, which avoids the checkerboard of transposed
convolutions) and a 7-wide head with a sigmoid: images in and out are single-channel intensities in [0, 1]
(:func:`~DeepRegistrationLib.intensity.normalise_unit_range`). Reflection padding; batch normalisation by default
(in eval mode its statistics are fixed, so a whole image or volume is translated as the training crops were;
instance normalisation, CycleGAN's choice, recomputes them over whatever it is given, and a whole image with its
background differs from a crop of anatomy). It is fully convolutional: any spatial size divisible by
:attr:`TranslationGenerator.multiple` (4), pixels or voxels of about the training spacing (the model card records
it).

:class:`PatchDiscriminator` is the 70x70 PatchGAN (Isola et al. 2017): ``(N, 1, *shape) -> (N, 1, *shape/8)``
real/fake scores, one per overlapping patch (least-squares GAN targets 1 and 0).

Tensors are ``(N, C, H, W)`` in 2D and ``(N, C, D, H, W)`` in 3D; the network never moves anatomy by design of
its training (:mod:`.training`), not of its architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import InputError

__all__ = ["TranslationGenerator", "PatchDiscriminator"]


def _conv(dim: int):
    return nn.Conv3d if dim == 3 else nn.Conv2d


def _norm(dim: int, channels: int, kind: str = "instance") -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm3d if dim == 3 else nn.BatchNorm2d)(channels)
    return (nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d)(channels, affine=True)


class _ResidualBlock(nn.Module):
    """x + (conv3 -> IN -> ReLU -> conv3 -> IN)(x), reflection padded."""

    def __init__(self, dim: int, channels: int, norm: str) -> None:
        super().__init__()
        conv = _conv(dim)
        self.body = nn.Sequential(conv(channels, channels, 3, padding=1, padding_mode="reflect"),
                                  _norm(dim, channels, norm), nn.ReLU(inplace=True),
                                  conv(channels, channels, 3, padding=1, padding_mode="reflect"),
                                  _norm(dim, channels, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TranslationGenerator(nn.Module):
    """ResNet generator ``(N, 1, *shape) -> (N, 1, *shape)`` in [0, 1]; ``config`` holds its constructor
    arguments (what a model card records)."""

    multiple = 4

    def __init__(self, dim: int = 2, channels: int = 32, blocks: int = 6, norm: str = "batch") -> None:
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"a translation network is 2D or 3D, got dim={dim}")
        if channels < 4 or blocks < 1:
            raise InputError(f"a translation network needs channels >= 4 and blocks >= 1, got {channels}, {blocks}")
        if norm not in ("batch", "instance"):
            raise InputError(f"norm must be batch or instance, got {norm!r}")
        self.config = {"dim": int(dim), "channels": int(channels), "blocks": int(blocks), "norm": norm}
        conv, c = _conv(dim), channels
        layers: list[nn.Module] = [conv(1, c, 7, padding=3, padding_mode="reflect"), _norm(dim, c, norm),
                                   nn.ReLU(True)]
        for k in (1, 2):  # down: c -> 2c -> 4c
            layers += [conv(c * k, c * 2 * k, 3, stride=2, padding=1, padding_mode="reflect"),
                       _norm(dim, c * 2 * k, norm), nn.ReLU(True)]
        layers += [_ResidualBlock(dim, 4 * c, norm) for _ in range(blocks)]
        for k in (4, 2):  # up: 4c -> 2c -> c
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       conv(c * k, c * k // 2, 3, padding=1, padding_mode="reflect"), _norm(dim, c * k // 2, norm),
                       nn.ReLU(True)]
        layers += [conv(c, 1, 7, padding=3, padding_mode="reflect"), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    @property
    def dim(self) -> int:
        return self.config["dim"]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != self.dim + 2 or image.shape[1] != 1:
            raise InputError(f"the {self.dim}D translation network takes (N, 1, *{self.dim}D shape), got "
                             f"{tuple(image.shape)}")
        bad = [n for n in image.shape[2:] if n % self.multiple]
        if bad:
            raise InputError(f"every spatial size must be divisible by {self.multiple}; got {tuple(image.shape[2:])}")
        return self.net(image)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(N, 1, *shape) -> (N, 1, *shape / 8)`` scores (no sigmoid: least-squares GAN)."""

    def __init__(self, dim: int = 2, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"a discriminator is 2D or 3D, got dim={dim}")
        self.config = {"dim": int(dim), "channels": int(channels), "layers": int(layers)}
        conv, c = _conv(dim), channels
        body: list[nn.Module] = [conv(1, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        for k in range(1, layers):
            cin, cout = c * 2 ** (k - 1), c * 2 ** k
            body += [conv(cin, cout, 4, stride=2 if k < layers else 1, padding=1), _norm(dim, cout),
                     nn.LeakyReLU(0.2, True)]
        cout = c * 2 ** (layers - 1)
        body += [conv(cout, cout, 3, padding=1), _norm(dim, cout), nn.LeakyReLU(0.2, True), conv(cout, 1, 3, padding=1)]
        self.net = nn.Sequential(*body)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)
