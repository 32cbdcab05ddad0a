"""What PSNR and SSIM give on the same images under each library's conventions (Set5/Set14, bicubic x2/x3/x4).

    python benchmarks/metric_conventions.py --dir ../shared/data/benchmark [--basicsr /path/to/BasicSR/basicsr]

The SR image is MATLAB-style bicubic upscaling of each set's LR image (``data.imresize.bicubic_upscale``,
rounded to 8 bits); the HR image is cropped to the SR size. For each set and scale, the mean over the
images of:

- ``ours``: ``metrics.psnr``/``metrics.ssim`` as the benchmark tables (Y of BT.601 studio range,
  ``scale`` pixels shaved);
- ``basicsr``: BasicSR's ``calculate_psnr``/``calculate_ssim`` (``test_y_channel=True``,
  ``crop_border=scale``) on BGR arrays, as its ``imwrite``/``img2tensor`` hand them over; ``basicsr
  RGB``: the same fed RGB arrays (its Y coefficients then weigh the wrong channels);
- ``pyiqa``: ``create_metric('psnry'/'ssim', crop_border=scale)``: its Y is YIQ's full-range luma
  by default; ``pyiqa ycbcr``: with ``color_space='ycbcr'``; ``pyiqa psnr``: its ``'psnr'`` default
  (RGB, nothing shaved);
- ``piq``: ``piq.psnr``/``piq.ssim`` defaults (RGB; SSIM downsamples images larger than 256 px);
  ``piq grey``: ``convert_to_greyscale=True`` (PSNR only, full-range luma);
- ``torchmetrics``: ``PeakSignalNoiseRatio(data_range=255)`` and ``StructuralSimilarityIndexMeasure``
  on the whole RGB image (nothing shaved).

A library that does not import is reported as absent. BasicSR is imported from its source folder
(``--basicsr``, its ``basicsr/`` package: the package ``__init__``s, which pull in compiled operators
and data code, are replaced by empty ones) or from an installed ``basicsr``.
"""

import argparse
import sys
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

import metrics  # noqa: E402
from data.imresize import bicubic_upscale  # noqa: E402

SCALES = (2, 3, 4)


def rgb(path: Path) -> np.ndarray:
    img = iio.imread(path)
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]


def pairs(folder: Path, scale: int):
    """(SR, HR) uint8 HWC RGB pairs of one set at one scale."""
    for hr_path in sorted((folder / 'HR').glob('*.png')):
        lr = rgb(folder / 'LR_bicubic' / f'X{scale}' / f'{hr_path.stem}x{scale}.png')
        x = torch.from_numpy(lr.astype(np.float64)).permute(2, 0, 1)[None]
        sr = bicubic_upscale(x, scale).round().clamp(0, 255)[0].permute(1, 2, 0).numpy().astype(np.uint8)
        hr = rgb(hr_path)[:sr.shape[0], :sr.shape[1]]
        yield sr, hr


def tensor(img: np.ndarray, peak: float = 255.0) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / (255.0 / peak)).permute(2, 0, 1)[None]


def import_basicsr(source: str | None):
    if source:
        for name, sub in (('basicsr', ''), ('basicsr.metrics', '/metrics'), ('basicsr.utils', '/utils')):
            module = types.ModuleType(name)
            module.__path__ = [source + sub]
            sys.modules[name] = module
        from basicsr.utils.color_util import bgr2ycbcr
        sys.modules['basicsr.utils'].bgr2ycbcr = bgr2ycbcr
        from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim
    else:
        from basicsr.metrics import calculate_psnr, calculate_ssim
    return calculate_psnr, calculate_ssim


def conventions(basicsr_source: str | None) -> dict:
    """Name -> (psnr(sr, hr, scale), ssim(sr, hr, scale) or None) on uint8 HWC RGB arrays; None: not installed."""
    found = {'ours': (lambda s, h, k: metrics.psnr(tensor(s), tensor(h), rgb_range=255, crop_border=k,
                                                   test_y_channel=True),
                      lambda s, h, k: metrics.ssim(tensor(s), tensor(h), rgb_range=255, crop_border=k,
                                                   test_y_channel=True))}
    try:
        bpsnr, bssim = import_basicsr(basicsr_source)
        found['basicsr'] = (lambda s, h, k: bpsnr(s[..., ::-1], h[..., ::-1], k, test_y_channel=True),
                            lambda s, h, k: bssim(s[..., ::-1], h[..., ::-1], k, test_y_channel=True))
        found['basicsr RGB'] = (lambda s, h, k: bpsnr(s, h, k, test_y_channel=True),
                                lambda s, h, k: bssim(s, h, k, test_y_channel=True))
    except ImportError:
        found['basicsr'] = found['basicsr RGB'] = None
    try:
        import pyiqa

        def iqa(name, **kw):
            cache = {}

            def score(s, h, k):
                if k not in cache:
                    cache[k] = pyiqa.create_metric(name, device='cpu', crop_border=k, **kw)
                return float(cache[k](tensor(s, 1.0), tensor(h, 1.0)))
            return score
        found['pyiqa'] = (iqa('psnry'), iqa('ssim'))
        found['pyiqa ycbcr'] = (iqa('psnry', color_space='ycbcr'), iqa('ssim', color_space='ycbcr'))
        found['pyiqa psnr'] = (lambda s, h, k: float(pyiqa.create_metric('psnr', device='cpu')(
            tensor(s, 1.0), tensor(h, 1.0))), None)
    except ImportError:
        found['pyiqa'] = found['pyiqa ycbcr'] = found['pyiqa psnr'] = None
    try:
        import piq
        found['piq'] = (lambda s, h, k: float(piq.psnr(tensor(s), tensor(h), data_range=255.0)),
                        lambda s, h, k: float(piq.ssim(tensor(s), tensor(h), data_range=255.0)))
        found['piq grey'] = (lambda s, h, k: float(piq.psnr(tensor(s), tensor(h), data_range=255.0,
                                                            convert_to_greyscale=True)), None)
    except ImportError:
        found['piq'] = found['piq grey'] = None
    try:
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
        found['torchmetrics'] = (lambda s, h, k: float(PeakSignalNoiseRatio(data_range=255.0)(tensor(s), tensor(h))),
                                 lambda s, h, k: float(StructuralSimilarityIndexMeasure(data_range=255.0)(
                                     tensor(s), tensor(h))))
    except ImportError:
        found['torchmetrics'] = None
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--dir', default='../shared/data/benchmark')
    p.add_argument('--sets', default='Set5+Set14')
    p.add_argument('--basicsr', default=None, help="BasicSR's basicsr/ source folder (else an installed basicsr)")
    args = p.parse_args()
    found = conventions(args.basicsr)
    absent = [name for name, fns in found.items() if fns is None]
    if absent:
        print('not installed:', ', '.join(absent))
    names = [name for name, fns in found.items() if fns is not None]
    for what, index in (('PSNR (dB)', 0), ('SSIM', 1)):
        cols = [n for n in names if found[n][index] is not None]
        print(f'\n{what}: ' + ' | '.join(['set x', *cols]))
        for set_name in args.sets.split('+'):
            for scale in SCALES:
                values = {n: [] for n in cols}
                for sr, hr in pairs(Path(args.dir) / set_name, scale):
                    for n in cols:
                        values[n].append(found[n][index](sr, hr, scale))
                means = {n: float(np.mean(v)) for n, v in values.items()}
                spread = {n: float(np.max(np.abs(np.subtract(v, values['ours'])))) for n, v in values.items()}
                digits = 3 if index == 0 else 4
                cells = [f'{means["ours"]:.{digits}f}'] + [
                    f'{means[n]:.{digits}f} ({means[n] - means["ours"]:+.{digits}f}, image max {spread[n]:.{digits}f})'
                    for n in cols[1:]]
                print(' | '.join([f'{set_name} x{scale}', *cells]))
                closest = min(cols[1:], key=lambda n: spread[n]) if len(cols) > 1 else None
                if closest is not None and spread[closest] < 1e-3:
                    print(f'    {closest}: largest per-image difference to ours {spread[closest]:.2g}')


if __name__ == '__main__':
    main()
