"""Make the LR images of any folder of HR images with MATLAB-style bicubic downscaling.

    python src/prepare_data.py <HR folder> --scale 2+3+4

writes ``<HR folder>/../LR_bicubic/X<s>/<name>x<s>.png`` for every image (HR cropped at the
bottom/right to a multiple of the scale first, as the benchmark sets are; grayscale, RGBA, palette and
16-bit images are converted to 8-bit RGB), the layout that ``--data_test`` reads for the benchmark sets.
``<name>`` is the image's stem, or ``<stem>_<ext>`` for images that share a stem (data.common.output_names).
Existing LR images are overwritten. The images are shared among ``--workers`` processes (default: the
available cores) with a progress bar; the files are the same whatever the number. Errors are one line
naming the path, exit status 2.
"""

import argparse
import sys
import warnings
from pathlib import Path

from core.errors import UserError, run_entry_point
from data.common import DataError, describe_conversion, list_images, output_names, read_info
from data.storage import available_cores, make_lr_images


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Write MATLAB-bicubic LR images next to a folder of HR images.')
    parser.add_argument('hr_folder', type=Path, help='folder of HR images, e.g. ../dataset/benchmark/Set5/HR')
    parser.add_argument('--scale', default='2+3+4', help='"+"-separated downscaling factors, e.g. 2+3+4')
    parser.add_argument('--workers', type=int, default=available_cores(),
                        help='processes making the LR images (default: the available cores; 1: this process only)')
    return parser


def parse_scales(value: str) -> list[int]:
    try:
        scales = [int(s) for s in value.split('+')]
    except ValueError:
        raise UserError(f'--scale {value!r}: expected "+"-separated integers >= 2, e.g. 2+3+4') from None
    if not scales or any(s < 2 for s in scales):
        raise UserError(f'--scale {value!r}: expected "+"-separated integers >= 2, e.g. 2+3+4')
    return scales


def prepare(hr_folder: Path, scales: list[int], workers: int = 1) -> list[Path]:
    """Write the LR images of every image in ``hr_folder`` with ``workers`` processes; returns the files
    written."""
    if not hr_folder.is_dir():
        raise DataError(f'{hr_folder}: not a folder of HR images')
    images = list_images(hr_folder)
    if not images:
        raise DataError(f'{hr_folder}: holds no images')
    message = describe_conversion(str(hr_folder), ((p.name, read_info(p).conversion) for p in images))
    if message:
        warnings.warn(message, stacklevel=2)
    lr_root = hr_folder.resolve().parent / 'LR_bicubic'
    jobs = [(path, [(lr_root / f'X{s}' / f'{name}x{s}.png', s) for s in scales])
            for path, name in zip(images, output_names(images), strict=True)]
    made = make_lr_images(jobs, workers=workers, pool=None if workers > 1 else False, fallback=False)
    return [path for paths in made for path in paths]


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scales = parse_scales(args.scale)
    if args.workers < 1:
        raise UserError(f'--workers {args.workers}: must be >= 1')
    written = prepare(args.hr_folder, scales, args.workers)
    print(f'wrote {len(written)} LR images under {written[0].parent.parent}')
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(lambda: run(argv))


if __name__ == '__main__':
    sys.exit(main())
