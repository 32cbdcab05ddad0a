"""MATLAB-compatible bicubic downscaling: the LR images of every published SR table.

The benchmark and DIV2K LR images were made with MATLAB's ``imresize(img, 1/s, 'bicubic')`` on
8-bit images: the cubic kernel (a = -0.5) widened by ``s`` for antialiasing, mirror-symmetric
borders, weights normalised per output pixel. Two details matter for bit-exact results and are
handled here rather than in ``bicubic_pytorch`` (which does the filtering itself):

- MATLAB resizes one dimension at a time, rows first when both scales are equal, and for a uint8
  input each one-dimensional pass returns uint8, so the intermediate image is rounded too;
- MATLAB rounds halves away from zero and saturates to [0, 255].

``bicubic_pytorch`` computes in float32, so about one pixel in 10^5 can land on the other side of a
rounding boundary than MATLAB's float64 arithmetic would put it (see tests/test_data_imresize.py).
"""

import bicubic_pytorch
import numpy as np
import torch


def crop_to_scale(img: np.ndarray, scale: int) -> np.ndarray:
    """``img`` (H, W[, C]) cropped at the bottom and right to a multiple of ``scale``, as the benchmark HR
    images are before their LR images are made."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _resize_pass(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # float64 in, so that bicubic_pytorch hands back floats and the rounding below is MATLAB's.
    y = bicubic_pytorch.imresize(x.to(torch.float64), sizes=size, antialiasing=True)
    return torch.floor(y + 0.5).clamp_(0, 255).to(torch.uint8)


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` of a uint8 image (H, W) or (H, W, C).

    H and W must be multiples of ``scale`` (crop with :func:`crop_to_scale` first); the result is
    uint8 (H/scale, W/scale[, C]).
    """
    if img.dtype != np.uint8:
        raise TypeError(f'bicubic_downscale expects a uint8 image, got {img.dtype}')
    if scale < 1 or int(scale) != scale:
        raise ValueError(f'scale must be a positive integer, got {scale}')
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'image size {h}x{w} is not a multiple of the scale {scale}; crop it first')
    # The padded border must fit inside the image (the kernel spans 4 * scale + 2 pixels).
    if min(h, w) < 4 * scale + 2:
        raise ValueError(f'image size {h}x{w} is too small to downscale by {scale}')
    if scale == 1:
        return img.copy()
    x = torch.from_numpy(np.array(img, dtype=np.uint8, order='C'))  # a writable copy
    x = x.permute(2, 0, 1) if x.ndim == 3 else x
    x = _resize_pass(x, (h // scale, w))
    x = _resize_pass(x, (h // scale, w // scale))
    x = x.permute(1, 2, 0) if x.ndim == 3 else x
    return np.ascontiguousarray(x.numpy())


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB ``imresize(lr, scale, 'bicubic')`` of float images (N, C, h, w), in float (no rounding).

    The usual baseline row of SR tables; quantise the result like any SR output before metrics.
    """
    return bicubic_pytorch.imresize(lr, scale=scale, antialiasing=True)
