"""The model over one test set: SR images and, where there is ground truth, PSNR/SSIM per image.

A row per image: ``[name, psnr, ssim]``, followed by ``bicubic_psnr, bicubic_ssim`` with
``--compare_bicubic`` (MATLAB bicubic upscaling of the same LR image, scored the same way). The
SR image is quantised to the 8-bit grid before it is scored or saved. Scores follow
:func:`metrics.calc_psnr` and :func:`metrics.calc_ssim` (the benchmark protocol or DIV2K's).
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.imresize import bicubic_upscale
from metrics import calc_psnr, calc_ssim, quantize

HEADER = ['image', 'psnr', 'ssim']
BICUBIC_HEADER = ['bicubic_psnr', 'bicubic_ssim']


def score_set(model: nn.Module, loader: DataLoader, *, scale: int, rgb_range: float, device: torch.device,
              compare_bicubic: bool,
              on_image: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> list[list]:
    """Super-resolve every image of ``loader`` with ``model`` (in eval mode) and score it.

    Args:
        model: the ``model.Model`` wrapper, in eval mode (it handles chop, self-ensemble, precision).
        loader: batches of one image ``(lr, hr, [name])``; ``hr`` is empty without ground truth.
        scale: the run's scale (the shave of the metrics).
        rgb_range: the value of white.
        device: where the model runs.
        compare_bicubic: also score bicubic upscaling.
        on_image: called as ``on_image(name, lr, hr, sr)`` for every image (to save it).

    Returns:
        One row per image with ground truth (see the module docstring); empty for a set without.
    """
    benchmark = loader.dataset.benchmark
    rows = []
    for lr, hr, name in tqdm(loader, ncols=80, leave=False, desc=f'{loader.dataset.name} x{scale}', disable=None):
        name = name[0] if isinstance(name, (list, tuple)) else name
        lr, hr = lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
        sr = quantize(model(lr).float(), rgb_range)
        if hr.numel() > 0:
            row = [name, calc_psnr(sr, hr, scale, rgb_range, benchmark), calc_ssim(sr, hr, scale, rgb_range, benchmark)]
            if compare_bicubic:
                bicubic = quantize(bicubic_upscale(lr.float(), scale), rgb_range)
                row += [calc_psnr(bicubic, hr, scale, rgb_range, benchmark),
                        calc_ssim(bicubic, hr, scale, rgb_range, benchmark)]
            rows.append(row)
        if on_image is not None:
            on_image(name, lr, hr, sr)
    return rows


def set_means(rows: list[list]) -> tuple[float, float]:
    """Mean PSNR and SSIM over the rows of :func:`score_set`; NaN for a set without ground truth."""
    if not rows:
        return math.nan, math.nan
    return sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows)


def best_epoch(psnr_column: torch.Tensor) -> tuple[float, int]:
    """The best PSNR in one set's log (epochs,) and its epoch (1-based); NaN epochs never win."""
    column = torch.nan_to_num(psnr_column, nan=-math.inf)
    idx = int(column.argmax())
    return float(column[idx]), idx + 1
