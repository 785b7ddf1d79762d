"""The learned metric's network: a shared convolutional encoder and a point-wise head.

Simonovsky et al. (2016) score a pair of patches with a 2-channel CNN. Here the two patches go through one
*shared* encoder (a pseudo-Siamese network in Zagoruyko and Komodakis' terms, with tied weights) whose
receptive field is the patch (17 voxels across), and a head of 1x1 convolutions compares the two feature
vectors at each point. The split is what makes it usable inside an optimiser at the cost of MI: each image's
features are computed once per pyramid level, the moving features are resampled through the transform like an
image (so the score is differentiable in the transform through the feature gradients), and a step costs one
resampling of ``features`` channels plus the head at the sampled points.

Convention: images ``(N, 1, [D,] H, W)`` with intensities in [0, 1] (the pipeline's normalisation); the score
``(N, 1, ...)`` estimates ``1 - exp(-|u| / s)`` where ``u`` is the local misalignment in voxels of the level
the images are on and ``s`` the card's ``scale_voxels``: 0 when aligned, rising with the offset, 1 far away. The head is symmetric in its two inputs, so the score does not depend on which image is fixed.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

__all__ = ["LearnedMetricNet", "native_bfloat16", "BFLOAT16_MIN_VOXELS"]


BFLOAT16_MIN_VOXELS = 2**18  # smaller images keep float32 inference: bfloat16 saves little there


@functools.lru_cache(maxsize=None)
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) and oneDNN takes bfloat16: only then
    is bfloat16 inference faster than float32 (an emulated one is not). False where this PyTorch cannot say
    (a build without these queries, as an older one inside an application may be)."""
    cpu = torch.cpu
    try:
        native = any(getattr(cpu, name, lambda: False)()
                     for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class LearnedMetricNet(nn.Module):
    """Encoder ``features(image)`` and head ``score(features_a, features_b)``.

    Args:
        dim: 2 or 3 (spatial dimensions of the images it takes).
        channels: output channels of the encoder's hidden 3x3(x3) convolutions.
        dilations: dilation of each encoder convolution (len(channels) + 1 of them; the last one makes the
            ``features`` output); the receptive field is ``1 + 2 * sum(dilations)`` voxels.
        features: channels of the feature map each image is reduced to.
        head: hidden channels of the head.
    """

    def __init__(self, dim: int = 2, channels: Sequence[int] = (16, 16, 16), dilations: Sequence[int] = (1, 1, 2, 4),
                 features: int = 8, head: int = 32) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if len(dilations) != len(channels) + 1:
            raise ValueError(f"{len(channels)} hidden layers need {len(channels) + 1} dilations, got {len(dilations)}")
        self.config = {"dim": dim, "channels": list(channels), "dilations": list(dilations), "features": features,
                       "head": head}
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        layers: list[nn.Module] = []
        widths = [1, *channels, features]
        for i, d in enumerate(dilations):
            layers.append(conv(widths[i], widths[i + 1], 3, padding=d, dilation=d))
            if i < len(dilations) - 1:
                layers.append(nn.LeakyReLU(0.1))
        self.encoder = nn.Sequential(*layers)
        # point-wise: 1x1 convolutions over the flattened points, so it takes feature maps and feature samples alike
        self.head = nn.Sequential(nn.Conv1d(3 * features, head, 1), nn.LeakyReLU(0.1), nn.Conv1d(head, 1, 1))
        self.bfloat16_inference = True  # CPU inference in bfloat16 where native (features()); False: float32

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def receptive_field(self) -> int:
        """Voxels across the neighbourhood one feature vector sees."""
        return 1 + 2 * sum(self.config["dilations"])

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, features, ...)`` float32 of ``image`` ``(N, 1, ...)`` (same spatial size; zero padding: the
        background; in either memory layout).

        Inference on float32 CPU tensors (no gradient) takes :meth:`_features_onednn`: the same convolutions, in
        bfloat16 for images of at least :data:`BFLOAT16_MIN_VOXELS` voxels where the CPU multiplies bfloat16
        natively (:func:`native_bfloat16`) and ``bfloat16_inference`` is on (features within about 0.3 % of the
        float32 ones; on the 3D slab case the error of a learned rigid registration stayed 1.44 mm while it went
        from 13.6 to 10.3 s; on the 2D BrainWeb cases, 57000 pixels, bfloat16 would have moved the error from
        0.110 / 0.111 to 0.117 / 0.113 px to save 0.1 s, hence the threshold); training and other devices run
        the encoder as is."""
        if (image.device.type == "cpu" and image.dtype == torch.float32 and not torch.is_grad_enabled()
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            half = (self.bfloat16_inference and image[0, 0].numel() >= BFLOAT16_MIN_VOXELS and native_bfloat16())
            return self._features_onednn(image, torch.bfloat16 if half else torch.float32)
        return self.encoder(image)

    def _features_onednn(self, image: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The encoder's convolutions called through oneDNN directly, the activations in place; ``dtype``
        bfloat16 runs them on bfloat16 activations and weights in the channels-last layout (oneDNN's fastest for
        it; the result is float32 and stays channels-last, which the pyramid's feature levels keep anyway), float32
        in the standard layout.

        PyTorch's size heuristic sends small inputs (the coarse pyramid levels) to its reference kernels: on 2 CPU
        cores (torch 2.13) the 3D encoder took 14 ms on 20 x 24 x 22 voxels there and 1.1 ms here, 6.5 -> 5.3 ms
        on 35 x 43 x 38; large inputs take oneDNN either way (1.40 -> 1.34 s on 140 x 170 x 150). Channels-last
        float32 activations made that 0.65 s, but under the ``deepreg`` process's allocator setting (freed memory
        kept, :mod:`~DeepRegistrationLib.runtime`) a learned 3D rigid registration then grew from 2.7-2.8 to
        3.4-4.1 GB as the 1 mm level remade its features on boxes of changing size: not adopted. bfloat16
        (channels-last, half the bytes) on a CPU with AVX512-BF16 (2 cores): 1.23 -> 0.56 s on 127 x 189 x 153,
        195 -> 59 ms on 71 x 100 x 81, 24 -> 7 ms on 40 x 55 x 46, conversions included."""
        half = dtype == torch.bfloat16
        layout = (torch.channels_last_3d if image.dim() == 5 else torch.channels_last) if half else torch.contiguous_format
        x = image.to(dtype).contiguous(memory_format=layout)
        for layer in self.encoder:
            if isinstance(layer, nn.LeakyReLU):
                x = torch.nn.functional.leaky_relu_(x, layer.negative_slope)
            else:
                weight = layer.weight.to(dtype).contiguous(memory_format=layout)
                bias = None if layer.bias is None else layer.bias.to(dtype)
                x = torch.ops.aten.mkldnn_convolution(x, weight, bias, list(layer.padding), list(layer.stride),
                                                      list(layer.dilation), layer.groups)
        return x.to(torch.float32) if half else x

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Misalignment score in (0, 1) of feature maps (or feature samples) ``(N, features, ...)``: ``(N, 1, ...)``.

        The head's 1x1 convolutions are applied as matrix products over the points (the same weights and sums):
        forward and backward at the 20000 points an optimiser step samples, 5.2-5.5 ms as 1-D convolutions and
        1.4-2.1 ms as products (2 CPU cores)."""
        first, act, last = self.head
        pair = torch.cat([(a - b).abs(), a * b, a + b], dim=1).flatten(2).transpose(1, 2)  # (N, points, 3 C)
        hidden = torch.nn.functional.leaky_relu(torch.nn.functional.linear(pair, first.weight[..., 0], first.bias),
                                                act.negative_slope)
        out = torch.nn.functional.linear(hidden, last.weight[..., 0], last.bias)  # (N, points, 1)
        return torch.sigmoid(out).transpose(1, 2).reshape(a.shape[0], 1, *a.shape[2:])
