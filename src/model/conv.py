"""A drop-in ``nn.Conv2d`` whose CPU weight gradient is computed as a few large matrix products.

On the CPU, oneDNN's weight gradient of LCoAN's 3x3 convolutions (128 -> 128 channels, training
patches of 48x48) runs at 55-95 GFLOP/s, a third to a half of the speed of the same convolution's
forward pass and input gradient; it was over half of a training step. The weight gradient of a
stride-1 convolution is a sum over the kernel taps of ``grad_out^T @ shifted input``, and with the
input zero-padded and flattened in (N, H, W, C) order every shift is a contiguous slice of one
matrix, so each tap is one GEMM without any im2col copy (110-145 GFLOP/s here, see
``benchmarks/bench_conv.py`` and ``benchmarks/RESULTS.md``). Forward and input gradient stay with ``F.conv2d``/oneDNN.

Only this layer's backward changes: parameters, ``state_dict`` and forward values are those of
``nn.Conv2d``. The fast weight gradient is used for CPU float32/float64 tensors outside autocast
with stride 1, dilation 1, one group, a square odd kernel of at least 3x3, padding
``kernel_size // 2`` and at least ``MIN_CHANNELS`` input and output channels; any other case is
plain ``nn.Conv2d``. (oneDNN is as fast for 1x1 kernels, whose weight gradient is one GEMM anyway,
and faster for thin GEMMs such as those of the RGB head and tail.)

``FAST_WEIGHT_GRAD`` is a process-wide setting, not an option: every ``Conv2d`` reads it at every
forward pass, so ``model.conv.FAST_WEIGHT_GRAD = False`` makes all of them, already built or not,
plain ``nn.Conv2d`` from their next forward on. It changes speed only (the gradients agree to float
rounding), except that the custom backward cannot be differentiated again: for double backward
(e.g. a gradient penalty) switch it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

MIN_CHANNELS = 16
# Pixels per batched GEMM of the weight gradient: big enough for efficient products, small enough
# that the padded copies of input and output gradient cost little memory.
CHUNK_ROWS = 16384
# Process-wide, read at every forward. Off: every ``Conv2d`` is exactly ``nn.Conv2d`` (benchmarks
# compare both in one run; double backward needs it off).
FAST_WEIGHT_GRAD = True


def conv_weight_grad(grad_out: Tensor, x: Tensor, kernel_size: int) -> Tensor:
    """Weight gradient (C_out, C_in, k, k) of a stride-1 'same' convolution of ``x`` (N, C_in, H, W)
    with output gradient ``grad_out`` (N, C_out, H, W), for odd ``kernel_size``.

    With the input padded by ``p = k // 2`` to (N, H + 2p, W + 2p, C_in) and flattened, output pixel
    ``m`` (in the same padded grid) reads tap (ky, kx) at row ``m + ky * (W + 2p) + kx``. The output
    gradient is zero-padded to that grid, so the padding rows contribute nothing. The padded copies
    are made for ``CHUNK_ROWS`` pixels' worth of images at a time, so they stay small beside the
    activations of a large batch.
    """
    n, c_in, h, w = x.shape
    c_out = grad_out.shape[1]
    pad = kernel_size // 2
    row = w + 2 * pad
    per_chunk = max(1, CHUNK_ROWS // ((h + 2 * pad) * row))
    # (C_out, k, k, C_in) memory is the channels-last layout of a (C_out, C_in, k, k) weight.
    grad_w = x.new_empty(c_out, kernel_size, kernel_size, c_in)
    for start in range(0, n, per_chunk):
        images = slice(start, start + per_chunk)
        padded_x = F.pad(x[images].permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad)).reshape(-1, c_in)
        padded_g = F.pad(grad_out[images].permute(0, 2, 3, 1), (0, 0, 0, 2 * pad, 0, 2 * pad)).reshape(-1, c_out)
        rows = padded_g.shape[0] - (kernel_size - 1) * (row + 1)
        g_t = padded_g[:rows].t()
        for ky in range(kernel_size):
            for kx in range(kernel_size):
                shift = ky * row + kx
                grad_w[:, ky, kx].addmm_(g_t, padded_x[shift:shift + rows], beta=0 if start == 0 else 1)
    return grad_w.permute(0, 3, 1, 2)


class _SameConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=k // 2)`` with the weight gradient of :func:`conv_weight_grad`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        pad = weight.shape[-1] // 2
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=pad)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        k = weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = conv_weight_grad(grad_out, x, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and outputs) with a faster CPU weight gradient where it applies."""

    def _fast_weight_grad_applies(self, x: Tensor) -> bool:
        k = self.kernel_size[0]
        return (FAST_WEIGHT_GRAD and self.weight.requires_grad and torch.is_grad_enabled() and x.device.type == 'cpu'
                and x.dtype in (torch.float32, torch.float64) and self.weight.dtype == x.dtype
                and not torch.is_autocast_enabled('cpu') and x.dim() == 4
                and self.kernel_size == (k, k) and k % 2 == 1 and k > 1 and self.padding == (k // 2, k // 2)
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == 'zeros'
                and min(self.in_channels, self.out_channels) >= MIN_CHANNELS)

    def forward(self, x: Tensor) -> Tensor:
        if self._fast_weight_grad_applies(x):
            return _SameConv2d.apply(x, self.weight, self.bias)
        return super().forward(x)
