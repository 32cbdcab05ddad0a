"""Peak memory of scoring one large SR image (PSNR + SSIM on Y, as the evaluation does), now and before.

The evaluation of ``--test_only --chop`` on an LR image of 2000x2000 at x2 needed 0.93 GB for the
inference and peaked at 4.0 GB once the SR image (4000x4000) was scored: the metrics converted the
whole image to float64 and kept a dozen full-size float64 maps for SSIM. They now work on strips of
rows (``metrics.STRIP_PIXELS``), each converted to float64 on its own.

Each variant runs in a fresh process holding an SR and an HR image of ``--size`` x ``--size`` x 3
(float32, 8-bit values); the number is the growth of the peak resident memory (``ru_maxrss``) while
scoring, above what the process held with its two images. 'before' is ``src/metrics.py`` of git
revision ``--before`` (the last one that scored whole images), loaded from git into the child.

    .venv/bin/python benchmarks/bench_scoring_memory.py --size 4000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH_DIR, add_src_to_path

BEFORE_REV = '9560edc'  # the last revision whose metrics.py scored whole images in float64


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(variant: str, size: int, metrics_file: str | None) -> dict:
    add_src_to_path()
    import torch
    torch.set_num_threads(2)
    if metrics_file:
        spec = importlib.util.spec_from_file_location('metrics_before', metrics_file)
        metrics = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(metrics)
    else:
        import metrics
    gen = torch.Generator().manual_seed(0)
    # Built in place: no temporary as large as an image, so the baseline is the two images alone.
    hr = torch.empty(1, 3, size, size).random_(0, 256, generator=gen).div_(255)
    sr = hr.clone()
    for rows in range(0, size, 256):
        band = sr[..., rows:rows + 256, :]
        band.add_(torch.empty_like(band).normal_(0, 3 / 255, generator=gen))
    baseline = _peak_mb()
    start = time.perf_counter()
    if variant == 'after':
        sr = metrics.quantize_(sr, 1)  # the evaluation quantises in place
    else:
        sr = metrics.quantize(sr, 1)
    psnr = metrics.calc_psnr(sr, hr, 2, 1)
    ssim = metrics.calc_ssim(sr, hr, 2, 1)
    return {'variant': variant, 'size': size, 'psnr': psnr, 'ssim': ssim, 'seconds': time.perf_counter() - start,
            'images_mb': 2 * hr.numel() * 4 / 2 ** 20, 'baseline_mb': baseline,
            'scoring_extra_mb': _peak_mb() - baseline}


def _run(variant: str, size: int, metrics_file: str | None) -> dict:
    cmd = [sys.executable, __file__, '--child', variant, '--size', str(size)]
    if metrics_file:
        cmd += ['--metrics_file', metrics_file]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={'OMP_NUM_THREADS': '2'}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=4000, help='SR/HR side in pixels (LR 2000 at x2: 4000)')
    parser.add_argument('--before', default=BEFORE_REV, help='git revision of the whole-image metrics')
    parser.add_argument('--child', choices=('before', 'after'), help=argparse.SUPPRESS)
    parser.add_argument('--metrics_file', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.size, args.metrics_file)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        before_file = Path(tmp) / 'metrics_before.py'
        source = subprocess.run(['git', 'show', f'{args.before}:src/metrics.py'], cwd=BENCH_DIR, capture_output=True,
                                text=True, check=True).stdout
        before_file.write_text(source)
        results.append(_run('before', args.size, str(before_file)))
        results.append(_run('after', args.size, None))
    print(f'Scoring one {args.size}x{args.size} RGB image (PSNR + SSIM on Y, x2 shave); '
          f'the two images take {results[0]["images_mb"]:.0f} MB')
    print(f'{"metrics":<8} | {"extra peak RSS":>14} | {"time":>7} | PSNR, SSIM')
    for r in results:
        print(f'{r["variant"]:<8} | {r["scoring_extra_mb"]:>11.0f} MB | {r["seconds"]:>6.1f}s | '
              f'{r["psnr"]:.9f}, {r["ssim"]:.9f}')
    print(f'PSNR difference: {abs(results[0]["psnr"] - results[1]["psnr"]):.2e} dB, '
          f'SSIM difference: {abs(results[0]["ssim"] - results[1]["ssim"]):.2e}')


if __name__ == '__main__':
    main()
