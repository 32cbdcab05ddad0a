"""Building blocks shared by the networks (EDSR-style convolutions, mean shift, residual block, upsampler).

Module and index layout follows the official LCoAN and EDSR-PyTorch code so that their checkpoints
load with ``strict=True`` (e.g. ``ResBlock.body.0``/``body.2`` for the two convolutions,
``Upsampler.0``/``.2`` for the convolutions of a x4 upsampler).
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

ConvFactory = Callable[..., nn.Conv2d]

# Mean colour of the DIV2K training images, which the EDSR family subtracts before the network.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def default_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    """A convolution that keeps the spatial size for odd ``kernel_size`` (padding ``kernel_size // 2``)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """Adds (``sign=+1``) or subtracts (``sign=-1``) the data set's mean colour, as a frozen 1x1 convolution.

    Being a convolution (not a constant) keeps the official checkpoint layout
    (``sub_mean.weight``/``sub_mean.bias``); the default initialisation it runs first is
    overwritten, but keeps the random-number consumption of the official constructor.

    Args:
        rgb_range: pixel values lie in ``[0, rgb_range]``.
        rgb_mean: mean of each channel in ``[0, 1]``; its length is the number of channels.
        rgb_std: standard deviation of each channel (same length as ``rgb_mean``).
        sign: -1 to subtract the mean, +1 to add it back.
    """

    def __init__(self, *, rgb_range: float, rgb_mean: Sequence[float], rgb_std: Sequence[float], sign: int) -> None:
        if len(rgb_mean) != len(rgb_std):
            raise ValueError(f'rgb_mean has {len(rgb_mean)} channels but rgb_std has {len(rgb_std)}')
        if sign not in (-1, 1):
            raise ValueError(f'sign must be -1 or +1, got {sign}')
        channels = len(rgb_mean)
        super().__init__(channels, channels, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1) / std.view(channels, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)
        for p in self.parameters():
            p.requires_grad = False


def div2k_mean_shift(*, n_colors: int, rgb_range: float, sign: int) -> MeanShift:
    """``MeanShift`` of the DIV2K mean colour; for one channel, the mean of the three channel means."""
    if n_colors == 3:
        rgb_mean = DIV2K_RGB_MEAN
    elif n_colors == 1:
        rgb_mean = (sum(DIV2K_RGB_MEAN) / 3,)
    else:
        raise ValueError(f'n_colors must be 1 or 3, got {n_colors}')
    return MeanShift(rgb_range=rgb_range, rgb_mean=rgb_mean, rgb_std=(1.0,) * n_colors, sign=sign)


class BasicBlock(nn.Sequential):
    """A convolution optionally followed by an activation, as a ``Sequential`` (the convolution is index 0).

    Args:
        conv: factory ``conv(in_channels, out_channels, kernel_size, bias=...)``.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel size.
        bias: whether the convolution has a bias.
        act: activation appended after the convolution, or ``None``.
    """

    def __init__(self, *, conv: ConvFactory = default_conv, in_channels: int, out_channels: int, kernel_size: int,
                 bias: bool = True, act: nn.Module | None = None) -> None:
        layers: list[nn.Module] = [conv(in_channels, out_channels, kernel_size, bias=bias)]
        if act is not None:
            layers.append(act)
        super().__init__(*layers)


class ResBlock(nn.Module):
    """``x + res_scale * conv(relu(conv(x)))`` (EDSR's residual block; LCoAN uses ``res_scale=1``).

    Args:
        conv: factory ``conv(in_channels, out_channels, kernel_size, bias=...)``.
        n_feats: channels of input and output.
        kernel_size: kernel size of both convolutions.
        res_scale: scale of the residual branch (EDSR's paper model: 0.1).
    """

    def __init__(self, *, conv: ConvFactory = default_conv, n_feats: int, kernel_size: int = 3,
                 res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size, bias=True),
            nn.ReLU(inplace=True),
            conv(n_feats, n_feats, kernel_size, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: the last convolution's output is not needed by its backward, and a fresh
        # feature map per block costs page faults on large images.
        res = self.body(x)
        if self.res_scale != 1:
            res.mul_(self.res_scale)
        return res.add_(x)


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling by ``scale``: a convolution to ``r*r*n_feats`` channels and a ``PixelShuffle(r)``,
    once for 3 and ``log2(scale)`` times with ``r = 2`` for powers of two.

    Args:
        conv: factory ``conv(in_channels, out_channels, kernel_size, bias=...)``.
        scale: upscaling factor: 3 or a power of two.
        n_feats: channels of input and output.
    """

    def __init__(self, *, conv: ConvFactory = default_conv, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale >= 1 and scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(n_feats, 4 * n_feats, 3, bias=True), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv(n_feats, 9 * n_feats, 3, bias=True), nn.PixelShuffle(3)]
        else:
            raise ValueError(f'Upsampler supports scale 3 and powers of two, got {scale}')
        super().__init__(*layers)
