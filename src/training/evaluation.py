"""The model over one test set: SR images and, where there is ground truth, PSNR/SSIM per image.

A row per image: ``[name, psnr, ssim]``, followed by ``bicubic_psnr, bicubic_ssim`` with
``--compare_bicubic`` (MATLAB bicubic upscaling of the same LR image, scored the same way). The
SR image is quantised to the 8-bit grid before it is scored or saved. Scores follow
:func:`metrics.calc_psnr` and :func:`metrics.calc_ssim` (the benchmark protocol or DIV2K's).

An image too small for a metric is scored as far as it allows: its PSNR is NaN when nothing is
left after shaving the border, its SSIM when the shaved image is smaller than the 11x11 SSIM
window; one warning per set and metric names them. Set means leave NaN out.
"""

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.rng import seeded
from data.imresize import bicubic_upscale
from metrics import SSIM_WINDOW, calc_psnr, calc_ssim, protocol_border, psnr_fits, quantize_, ssim_fits
from training import interrupts

HEADER = ['image', 'psnr', 'ssim']
BICUBIC_HEADER = ['bicubic_psnr', 'bicubic_ssim']


def score_set(model: nn.Module, loader: DataLoader, *, scale: int, rgb_range: float, device: torch.device,
              compare_bicubic: bool, seed: int | None = None,
              on_image: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> list[list]:
    """Super-resolve every image of ``loader`` with ``model`` (in eval mode) and score it.

    Args:
        model: the ``model.Model`` wrapper, in eval mode (it handles chop, self-ensemble, precision).
        loader: batches of one image ``(lr, hr, [name])``; ``hr`` is empty without ground truth.
        scale: the run's scale (the shave of the metrics).
        rgb_range: the value of white.
        device: where the model runs.
        compare_bicubic: also score bicubic upscaling.
        seed: torch's generators are seeded with it for every image (and restored after), so a network that
            draws random numbers gives the same output for an image whenever it is evaluated; None: as they are.
        on_image: called as ``on_image(name, lr, hr, sr)`` for every image (to save it).

    Returns:
        One row per image with ground truth (see the module docstring); empty for a set without.
    """
    benchmark = loader.dataset.benchmark
    border = protocol_border(scale, benchmark)
    rows, no_psnr, no_ssim = [], [], []

    def score(img, hr):
        return [calc_psnr(img, hr, scale, rgb_range, benchmark) if psnr_fits(hr.shape, border) else math.nan,
                calc_ssim(img, hr, scale, rgb_range, benchmark) if ssim_fits(hr.shape, border) else math.nan]

    bar = tqdm(loader, ncols=80, leave=False, desc=f'{loader.dataset.name} x{scale}', disable=None)
    for lr, hr, name in interrupts.batches(bar, training=False):
        name = name[0] if isinstance(name, (list, tuple)) else name
        lr, hr = lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
        with seeded(seed, device):  # a network that draws random numbers (NLSN) draws them after --seed
            sr = quantize_(model(lr).float(), rgb_range)  # in place: no second copy of a large image
        if hr.numel() > 0:
            size = f'{name} {hr.shape[-1]}x{hr.shape[-2]}'
            if not psnr_fits(hr.shape, border):
                no_psnr.append(size)
            elif not ssim_fits(hr.shape, border):
                no_ssim.append(size)
            row = [name, *score(sr, hr)]
            if compare_bicubic:
                # An LR image of 1 or 2 pixels is too small for bicubic upscaling; PSNR fails on it anyway.
                row += (score(quantize_(bicubic_upscale(lr.float(), scale), rgb_range), hr)
                        if psnr_fits(hr.shape, border) else [math.nan, math.nan])
            rows.append(row)
        if on_image is not None:
            on_image(name, lr, hr, sr)
    set_name = loader.dataset.name
    if no_psnr:
        warnings.warn(f'{set_name}: {len(no_psnr)} HR image(s) too small to score: nothing is left after shaving '
                      f'{border} pixels per border, PSNR and SSIM not computed: {_listing(no_psnr)}', stacklevel=2)
    if no_ssim:
        warnings.warn(f'{set_name}: SSIM not computed for {len(no_ssim)} HR image(s) smaller than its '
                      f'{SSIM_WINDOW}x{SSIM_WINDOW} window after shaving {border} pixels per border (PSNR is): '
                      f'{_listing(no_ssim)}', stacklevel=2)
    return rows


def _listing(items: list[str], at_most: int = 4) -> str:
    return ', '.join(items[:at_most]) + (f' and {len(items) - at_most} more' if len(items) > at_most else '')


def set_means(rows: list[list]) -> tuple[float, float]:
    """Mean PSNR and SSIM over the rows of :func:`score_set`, leaving out the images a metric could not
    score; NaN for a set without ground truth or without an image large enough."""
    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan
    return mean([r[1] for r in rows]), mean([r[2] for r in rows])


def unscored(n_sets: int) -> tuple[torch.Tensor, torch.Tensor, list[int | None]]:
    """Mean PSNR and SSIM (NaN) and images scored (None) of ``n_sets`` test sets not scored (yet)."""
    psnr = torch.full((n_sets,), math.nan, dtype=torch.float64)
    return psnr, psnr.clone(), [None] * n_sets


def best_epoch(psnr_column: torch.Tensor) -> tuple[float, int]:
    """The best PSNR in one set's log (epochs,) and its epoch (1-based); NaN epochs never win."""
    column = torch.nan_to_num(psnr_column, nan=-math.inf)
    idx = int(column.argmax())
    return float(column[idx]), idx + 1


def is_best(psnr_log: torch.Tensor, epoch: int) -> bool:
    """Whether ``epoch`` (1-based) is the best in ``psnr_log`` (epochs, sets) on the first test set with
    ground truth (the set that chooses ``model_best.pt``)."""
    for i in range(psnr_log.shape[1]):
        if not torch.isnan(psnr_log[:, i]).all():
            return best_epoch(psnr_log[:, i])[1] == epoch
    return False
