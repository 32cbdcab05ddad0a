"""PSNR and SSIM as the published SR tables compute them; pure functions of two image batches.

Both images are (N, C, H, W) tensors in ``[0, rgb_range]`` with C = 3 (RGB) or 1. The SR image is
first quantised to the 8-bit grid, as a saved PNG would hold it (the HR image from the loaders is
on it already). With ``test_y_channel`` the luma of the 8-bit YCbCr image is measured (ITU-R BT.601
as MATLAB's ``rgb2ycbcr``; a one-channel input is taken as that luma); ``crop_border`` pixels are
shaved from every side. SSIM is MATLAB's ``ssim`` (Wang et al. 2004). Batches give the mean of the
per-image values.

Memory: both are computed in strips of rows, each converted to float64 on its own, so scoring an
image needs its two inputs plus a few ``STRIP_PIXELS`` x 8-byte maps, whatever the image size
(62 MB above the two images for a 4000x4000 one, 2.5 GB before: ``benchmarks/bench_scoring_memory.py``).
The values are those of the whole image in float64 (the strips only change the order of the sums).

:func:`calc_psnr` and :func:`calc_ssim` are the two protocols of EDSR-style code: benchmark sets
(Y, ``scale`` shaved) and DIV2K validation (PSNR on RGB with ``scale + 6`` shaved; SSIM on Y).
"""

import math

import torch
import torch.nn.functional as F

# BT.601 luma for 8-bit RGB, as MATLAB's rgb2ycbcr: Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256.
# The data code converts --n_colors 1 images with the same coefficients.
Y_COEFFS = (65.738, 129.057, 25.064)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# Pixels per strip (rows x width) of the strip-wise computation.
STRIP_PIXELS = 1 << 18


def quantize(img: torch.Tensor, rgb_range: float) -> torch.Tensor:
    """Round ``img`` (values in [0, rgb_range]) to the 8-bit grid, as a saved PNG would hold it."""
    pixel_range = 255 / rgb_range
    return img.mul(pixel_range).clamp(0, 255).round().div(pixel_range)


def quantize_(img: torch.Tensor, rgb_range: float) -> torch.Tensor:
    """:func:`quantize` in place (no second copy of a large image); returns ``img``."""
    pixel_range = 255 / rgb_range
    return img.mul_(pixel_range).clamp_(0, 255).round_().div_(pixel_range)


def shaved_size(shape: torch.Size | tuple, crop_border: int) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` (..., H, W) with ``crop_border`` pixels shaved per side (<= 0: none left)."""
    return shape[-2] - 2 * crop_border, shape[-1] - 2 * crop_border


def psnr_fits(shape: torch.Size | tuple, crop_border: int) -> bool:
    """Whether PSNR can be measured: something is left after shaving."""
    return min(shaved_size(shape, crop_border)) > 0


def ssim_fits(shape: torch.Size | tuple, crop_border: int) -> bool:
    """Whether SSIM can be measured: the shaved image holds the whole SSIM window."""
    return min(shaved_size(shape, crop_border)) >= SSIM_WINDOW


def psnr(sr: torch.Tensor, hr: torch.Tensor, *, rgb_range: float, crop_border: int,
         test_y_channel: bool) -> float:
    """PSNR in dB (peak 255) of ``sr`` against ``hr``, averaged over the batch; ``inf`` for identical images.

    Args:
        sr: (N, C, H, W) super-resolved images in [0, rgb_range]; quantised to 8 bits here.
        hr: (N, C, H, W) ground truth in [0, rgb_range], on the 8-bit grid.
        rgb_range: the value of white.
        crop_border: pixels shaved from each side before measuring.
        test_y_channel: measure the BT.601 luma; else every channel as given.

    Raises:
        ValueError: the shapes differ, are not (N, 1 or 3, H, W), or leave nothing after shaving.
    """
    _check_pair(sr, hr, crop_border)
    values = []
    for n in range(sr.shape[0]):
        total, count = 0.0, 0
        for x, y in _strips(sr[n:n + 1], hr[n:n + 1], rgb_range=rgb_range, crop_border=crop_border,
                            test_y_channel=test_y_channel, halo=0):
            total += float((x - y).pow_(2).sum())
            count += x.numel()
        mse = total / count
        values.append(math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse))
    return float(sum(values) / len(values))


def ssim(sr: torch.Tensor, hr: torch.Tensor, *, rgb_range: float, crop_border: int,
         test_y_channel: bool) -> float:
    """SSIM as MATLAB's ``ssim``, averaged over the batch (and over the channels without ``test_y_channel``).

    11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, mean over the
    'valid' positions (those the window covers fully). Arguments and errors as :func:`psnr`; also
    ValueError if the shaved image is smaller than the window.
    """
    _check_pair(sr, hr, crop_border)
    if not ssim_fits(sr.shape, crop_border):
        raise ValueError(f'image {tuple(sr.shape[-2:])} minus the shaved border is smaller than the SSIM window')
    g = _gaussian_window(sr.device)
    values = []
    for n in range(sr.shape[0]):
        total, count = 0.0, 0
        for x, y in _strips(sr[n:n + 1], hr[n:n + 1], rgb_range=rgb_range, crop_border=crop_border,
                            test_y_channel=test_y_channel, halo=SSIM_WINDOW - 1):
            # Every channel on its own: (1, C, h, w) -> (C, 1, h, w).
            ssim_map = _ssim_map(x.flatten(0, 1)[:, None], y.flatten(0, 1)[:, None], g)
            total += float(ssim_map.sum())
            count += ssim_map.numel()
        values.append(total / count)
    return float(sum(values) / len(values))


def _ssim_map(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """SSIM at every 'valid' position of (M, 1, h, w) images (the window fully inside)."""
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x ** 2
    var_y = _filter_valid(y * y, g) - mu_y ** 2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def calc_psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float, benchmark: bool = True) -> float:
    """EDSR's protocol: benchmark sets on Y with ``scale`` shaved, else (DIV2K) RGB with ``scale + 6``."""
    return psnr(sr, hr, rgb_range=rgb_range, crop_border=protocol_border(scale, benchmark), test_y_channel=benchmark)


def calc_ssim(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float, benchmark: bool = True) -> float:
    """SSIM on Y with the shave of :func:`calc_psnr` (``scale``, or ``scale + 6`` when not ``benchmark``)."""
    return ssim(sr, hr, rgb_range=rgb_range, crop_border=protocol_border(scale, benchmark), test_y_channel=True)


def protocol_border(scale: int, benchmark: bool) -> int:
    """The border :func:`calc_psnr` and :func:`calc_ssim` shave."""
    return scale if benchmark else scale + 6


def _check_pair(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> None:
    if sr.dim() != 4 or hr.dim() != 4:
        raise ValueError(f'expected (N, C, H, W) tensors, got sr {tuple(sr.shape)} and hr {tuple(hr.shape)}')
    if sr.shape != hr.shape:
        raise ValueError(f'sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape')
    if sr.shape[1] not in (1, 3):
        raise ValueError(f'expected 1 (Y) or 3 (RGB) channels, got {sr.shape[1]}')
    if crop_border < 0:
        raise ValueError(f'crop_border {crop_border}: must not be negative')
    if min(sr.shape[-2:]) <= 2 * crop_border:
        raise ValueError(f'image {tuple(sr.shape[-2:])} is too small to shave {crop_border} pixels per border')


def _strips(sr: torch.Tensor, hr: torch.Tensor, *, rgb_range: float, crop_border: int, test_y_channel: bool,
            halo: int):
    """The shaved images in strips of rows, each as :func:`_prepare` makes it; consecutive strips overlap
    by ``halo`` rows, so that a filter of ``halo + 1`` rows sees every 'valid' position exactly once."""
    top, bottom = crop_border, sr.shape[-2] - crop_border
    left, right = crop_border, sr.shape[-1] - crop_border
    rows = max(1, STRIP_PIXELS // max(1, right - left))  # output rows per strip
    start = top
    while True:
        stop = min(bottom, start + rows + halo)
        yield _prepare(sr[..., start:stop, left:right], hr[..., start:stop, left:right], rgb_range=rgb_range,
                       test_y_channel=test_y_channel)
        if stop >= bottom:
            return
        start = stop - halo


def _prepare(sr: torch.Tensor, hr: torch.Tensor, *, rgb_range: float,
             test_y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (already shaved) images as 8-bit levels in float64, in Y if asked."""
    pixel_range = 255 / rgb_range
    # SR is quantised as a saved PNG would be (in its own dtype); rounding HR removes float32
    # representation noise (k / 255).
    x = quantize(sr, rgb_range).double().mul(pixel_range).round()
    y = hr.double().mul(pixel_range).clamp(0, 255).round()
    if test_y_channel:
        x, y = _luma(x), _luma(y)
    return x, y


def _luma(img8: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) on the 8-bit scale -> (N, 1, H, W) Y in [16, 235]; one channel is Y already."""
    if img8.shape[1] == 1:
        return img8
    weights = img8.new_tensor(Y_COEFFS).view(1, 3, 1, 1) / 256
    return (img8 * weights).sum(dim=1, keepdim=True) + 16


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _filter_valid(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of (M, 1, H, W), keeping only the fully covered ('valid') positions."""
    img = F.conv2d(img, g.view(1, 1, -1, 1))
    return F.conv2d(img, g.view(1, 1, 1, -1))
