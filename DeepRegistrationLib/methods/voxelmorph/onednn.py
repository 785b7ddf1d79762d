"""Inference convolutions through oneDNN on the CPU.

PyTorch's CPU ``conv3d`` falls back to its reference kernel (``slow_conv3d_forward``) when the input is
"small" by a heuristic tuned for 2D (batch x channels x the first two spatial sizes at most 20480 in torch
2.x), which VoxelMorph's inputs are: the first layer (2 channels at 80 x 96 x 112) and the 32-channel layers
at 20 x 24 x 28 and below. On 2 CPU cores (AMD EPYC, AVX2; torch 2.13) the first layer takes 204 ms there
against 84 ms in oneDNN, a 32-channel 20 x 24 x 28 layer 63 ms against 8 ms, and the large layers the same
in both (a whole forward pass of the bundled model, same process: 1.24-1.26 -> 1.07-1.12 s). :func:`use_onednn` routes every 3D
convolution of a network through oneDNN for inference on float32 CPU tensors; anything else (CUDA, autograd,
other dtypes, non-zero padding modes, a torch built without oneDNN) takes PyTorch's usual path.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["OneDNNConv3d", "use_onednn"]


class OneDNNConv3d(nn.Conv3d):
    """:class:`torch.nn.Conv3d` whose no-grad float32 CPU forward calls oneDNN directly (same parameters,
    same state dict, same result to float rounding)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.device.type == "cpu" and input.dtype == torch.float32 and weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled):
            return torch.ops.aten.mkldnn_convolution(input, weight, bias, list(self.padding), list(self.stride),
                                                     list(self.dilation), self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn(net: nn.Module) -> nn.Module:
    """``net`` with every :class:`torch.nn.Conv3d` turned into :class:`OneDNNConv3d` (in place; returned)."""
    for module in net.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = OneDNNConv3d
    return net
