"""The scores as the log shows them: a line per test set after every evaluation, and the tables that
``--test_only`` and ``--compare_bicubic`` add.

All are pure functions of the scores, so the log shows exactly what the CSV files hold (rounded).
"""

import math
from collections.abc import Sequence

_EMPTY_CELL = '       -        '  # as wide as '{psnr:7.2f} / {ssim:.4f}'


def score_line(name: str, scale: int, psnr: float, ssim: float, n_rows: int | None,
               best: tuple[float, int] | None = None) -> str:
    """One test set's mean PSNR and SSIM, or why it has none.

    Args:
        name: the test set.
        scale: the run's scale.
        psnr, ssim: the set's means; NaN when no image could be scored (SSIM alone: all too small for its
            window).
        n_rows: the number of images with ground truth; None when the evaluation failed.
        best: the best PSNR of the run on this set and its epoch (training runs).
    """
    head = f'[{name} x{scale}]'
    if n_rows is None:
        return f'{head}\tnot scored (the evaluation failed)'
    if n_rows == 0:
        return f'{head}\tno ground truth: SR images only'
    if math.isnan(psnr):
        return f'{head}\tno image large enough to score'
    ssim_text = 'n/a (images smaller than its window)' if math.isnan(ssim) else f'{ssim:.4f}'
    line = f'{head}\tPSNR: {psnr:.3f} SSIM: {ssim_text}'
    if best is not None:
        line += f' (Best: {best[0]:.3f} @epoch {best[1]})'
    return line


def results_table(sets: Sequence[str], scale: int, psnr: Sequence[float], ssim: Sequence[float]) -> str:
    """The paper's layout: one row per test set, a 'PSNR / SSIM' column headed ``x<scale>``.

    Args:
        sets: the test set names.
        scale: the run's scale.
        psnr, ssim: one mean per set; NaN for a set without ground truth (shown as '-').
    """
    width = max([len('Dataset')] + [len(n) for n in sets])
    head = f'{"Dataset":<{width}} | {"x" + str(scale):^16}'
    lines = ['PSNR (dB) / SSIM', head, '-' * len(head)]
    for name, p, s in zip(sets, psnr, ssim, strict=True):
        cell = _EMPTY_CELL if math.isnan(p) else f'{p:7.2f} / {s:.4f}'
        lines.append(f'{name:<{width}} | {cell}')
    return '\n'.join(lines)


def comparison_table(name: str, scale: int, model: str, rows: Sequence[Sequence]) -> str:
    """Per-image PSNR/SSIM of bicubic upscaling and of the model, with their averages and the gain.

    Args:
        name: the test set.
        scale: the run's scale.
        model: ``--model``, the column's title.
        rows: ``[image, psnr, ssim, bicubic_psnr, bicubic_ssim]`` per image (non-empty).
    """
    width = max(len('average'), *(len(r[0]) for r in rows))
    head = f'{"image":<{width}} | {"bicubic":^16} | {model:^16} | gain (dB)'
    lines = [f'\n{name} x{scale}: PSNR (dB) / SSIM', head, '-' * len(head)]
    mean = [sum(r[k] for r in rows) / len(rows) for k in range(1, 5)]
    for label, (p, s, bp, bs) in [(r[0], r[1:5]) for r in rows] + [('average', mean)]:
        lines.append(f'{label:<{width}} | {bp:7.2f} / {bs:.4f} | {p:7.2f} / {s:.4f} | {p - bp:+.2f}')
    return '\n'.join(lines)
