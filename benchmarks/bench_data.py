"""Benchmark of data loading: decoding PNG files (``--ext img``) against the memory-mapped ``.npy``
cache (``--ext sep``), for whole images and for training patches.

A DIV2K-like tree (``--images`` HR images of ``--size``, e.g. 2040x1356, made by enlarging
scikit-image photographs, with X2 LR images; the LR content does not matter here, so Pillow makes it)
is written to a temporary folder, the sep cache is built once, and then, each in a fresh process:

* ``decode``: read every HR and LR image from its PNG (data.common.read_image);
* ``mmap``: read every HR and LR image from the cache (np.load(mmap_mode='r') + a copy);
* ``patches_img`` / ``patches_sep``: ``--samples`` training samples (TrainPatches.__getitem__:
  random HR 96 / LR 48 patch, augmentation, tensors) with ``--ext img`` / ``sep``, main process only.

Usage: ``python benchmarks/bench_data.py [--images 8] [--size 2040x1356] [--samples 64] [--json OUT]``.
Timings on a shared or busy machine are noise: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_src_to_path, machine_info, run_in_subprocess  # noqa: E402

add_src_to_path()

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')


def make_tree(dir_data: Path, n_images: int, width: int, height: int) -> list[Path]:
    """DIV2K/DIV2K_train_HR/000k.png and DIV2K_train_LR_bicubic/X2/000kx2.png; returns all image paths."""
    hr_dir = dir_data / 'DIV2K' / 'DIV2K_train_HR'
    lr_dir = dir_data / 'DIV2K' / 'DIV2K_train_LR_bicubic' / 'X2'
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    paths = []
    for k in range(1, n_images + 1):
        photo = Image.fromarray(getattr(skimage.data, PHOTOS[k % len(PHOTOS)])())
        hr = photo.resize((width, height), Image.Resampling.BICUBIC)
        hr.save(hr_dir / f'{k:04d}.png')
        hr.resize((width // 2, height // 2), Image.Resampling.BICUBIC).save(lr_dir / f'{k:04d}x2.png')
        paths += [hr_dir / f'{k:04d}.png', lr_dir / f'{k:04d}x2.png']
    return paths


def _args(dir_data: str, n_images: int, ext: str):
    import option

    return option.parse_args(['--dir_data', dir_data, '--data_train', 'DIV2K', '--data_test', 'DIV2K',
                              '--data_range', f'1-{n_images}/1-1', '--scale', '2', '--patch_size', '96',
                              '--ext', ext, '--n_threads', '0', '--cpu'])


# ----------------------------------------------------------------------------------------------
# setup functions (run in the child process; each returns the callable to time)


def decode(*, paths: list[str]):
    from data.common import read_image

    files = [Path(p) for p in paths]
    return lambda: [read_image(p) for p in files]


def mmap(*, dir_data: str, paths: list[str]):
    from data.storage import ImageStore

    store = ImageStore(ext='sep')
    root = Path(dir_data) / 'DIV2K'
    files = [Path(p) for p in paths]
    for p in files:
        store.inspect(p, root)  # finds the cache built by the parent
    return lambda: [np.array(store.load(p)) for p in files]


def patches(*, dir_data: str, n_images: int, ext: str, samples: int):
    import data

    dataset = data.Data(_args(dir_data, n_images, ext)).loader_train.dataset
    return lambda: [dataset[i] for i in range(samples)]


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=8, help='HR images in the tree')
    parser.add_argument('--size', default='2040x1356', help='HR width x height (DIV2K-like)')
    parser.add_argument('--samples', type=int, default=64, help='training samples per timed call')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--json', type=Path, help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split('x'))

    with tempfile.TemporaryDirectory(prefix='bench_data_') as tmp:
        dir_data = Path(tmp)
        print(f'writing {args.images} images of {width}x{height} to {dir_data} ...', file=sys.stderr, flush=True)
        paths = [str(p) for p in make_tree(dir_data, args.images, width, height)]
        import data

        data.Data(_args(str(dir_data), args.images, 'sep'))  # builds the cache, untimed
        megapixels = sum(Image.open(p).width * Image.open(p).height for p in paths) / 1e6
        runs = {
            'decode': ('bench_data:decode', dict(paths=paths), len(paths), 'images'),
            'mmap': ('bench_data:mmap', dict(dir_data=str(dir_data), paths=paths), len(paths), 'images'),
        }
        for ext in ('img', 'sep'):
            runs[f'patches_{ext}'] = ('bench_data:patches', dict(dir_data=str(dir_data), n_images=args.images,
                                                                 ext=ext, samples=args.samples), args.samples,
                                      'samples')
        results = {}
        for name, (fn, kwargs, count, unit) in runs.items():
            print(f'running {name} ...', file=sys.stderr, flush=True)
            r = run_in_subprocess(fn, kwargs, threads=args.threads, repeats=args.repeats)
            r.update(per_second=count / r['median_s'], unit=unit, count=count)
            if unit == 'images':
                r['megapixels_per_second'] = megapixels / r['median_s']
            results[name] = r

    info = machine_info(args.threads)
    lines = [f'data loading, {args.images} HR {width}x{height} + X2 LR images, {info["cpu"]}, '
             f'{args.threads} threads, torch {info["torch"]}',
             f'| {"run":<12} | {"median s":>9} | {"per second":>16} | {"Mpx/s":>7} | {"peak RSS MB":>11} |',
             f'|{"-" * 14}|{"-" * 11}|{"-" * 18}|{"-" * 9}|{"-" * 13}|']
    for name, r in results.items():
        mpx = f'{r["megapixels_per_second"]:.1f}' if 'megapixels_per_second' in r else '-'
        lines.append(f'| {name:<12} | {r["median_s"]:>9.3f} | {r["per_second"]:>8.1f} {r["unit"]:<7} | {mpx:>7} | '
                     f'{r["peak_rss_mb"]:>11.0f} |')
    whole = results['mmap']['per_second'] / results['decode']['per_second']
    samples = results['patches_sep']['per_second'] / results['patches_img']['per_second']
    lines.append(f'cache vs decode: whole images x{whole:.1f}, training samples x{samples:.1f}')
    print('\n'.join(lines))
    report = {'machine': info, 'images': args.images, 'size': [width, height], 'results': results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + '\n')
    return report


if __name__ == '__main__':
    main()
