"""An independent numpy MATLAB ``imresize`` (contributions + imresizemex) for uint8 downscaling."""

import numpy as np


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic convolution kernel with a = -0.5.
    ax = np.abs(x)
    inner = 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    outer = -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return np.where(ax <= 1, inner, np.where(ax <= 2, outer, 0.0))


def _contributions(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based source indices of each output pixel, MATLAB style, for scale < 1."""
    width = 4.0 / scale  # the kernel is stretched by 1/scale: antialiasing
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based source coordinate of output pixel x
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    weights = scale * _keys_cubic(scale * (u[:, None] - idx))
    weights /= weights.sum(axis=1, keepdims=True)
    # symmetric padding: 1..n, n..1, repeated
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    return weights, mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]


def matlab_imresize_reference(img: np.ndarray, scale: int, round_between: bool = True) -> np.ndarray:
    """``imresize(img, 1/scale, 'bicubic')`` for a uint8 image whose sides are multiples of ``scale``:
    rows first, then columns; each pass of a uint8 image returns uint8 (round half away, saturate)."""
    out = img.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        weights, idx = _contributions(n, n // scale, 1.0 / scale)
        moved = np.moveaxis(out, axis, 0)
        res = np.einsum('ok,ok...->o...', weights, moved[idx])
        if round_between or axis == 1:
            res = np.clip(np.floor(res + 0.5), 0, 255)
        out = np.moveaxis(res, 0, axis)
    return out.astype(np.uint8)
