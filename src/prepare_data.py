"""Make the LR images of any folder of HR images with MATLAB-style bicubic downscaling.

    python src/prepare_data.py <HR folder> --scale 2+3+4

writes ``<HR folder>/../LR_bicubic/X<s>/<name>x<s>.png`` for every image (HR cropped at the
bottom/right to a multiple of the scale first, as the benchmark sets are; grayscale, RGBA, palette and
16-bit images are converted to 8-bit RGB), the layout that ``--data_test`` reads for the benchmark sets.
Existing LR images are overwritten. Errors are one line naming the path, exit status 2.
"""

import argparse
import sys
import warnings
from pathlib import Path

from data.common import DataError, describe_conversion, list_images, read_image, read_info
from data.imresize import bicubic_downscale, crop_to_scale
from data.storage import save_png
from errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Write MATLAB-bicubic LR images next to a folder of HR images.')
    parser.add_argument('hr_folder', type=Path, help='folder of HR images, e.g. ../dataset/benchmark/Set5/HR')
    parser.add_argument('--scale', default='2+3+4', help='"+"-separated downscaling factors, e.g. 2+3+4')
    return parser


def parse_scales(value: str) -> list[int]:
    try:
        scales = [int(s) for s in value.split('+')]
    except ValueError:
        raise UserError(f'--scale {value!r}: expected "+"-separated integers >= 2, e.g. 2+3+4') from None
    if not scales or any(s < 2 for s in scales):
        raise UserError(f'--scale {value!r}: expected "+"-separated integers >= 2, e.g. 2+3+4')
    return scales


def prepare(hr_folder: Path, scales: list[int]) -> list[Path]:
    """Write the LR images of every image in ``hr_folder``; returns the files written."""
    if not hr_folder.is_dir():
        raise DataError(f'{hr_folder}: not a folder of HR images')
    images = list_images(hr_folder)
    if not images:
        raise DataError(f'{hr_folder}: holds no images')
    message = describe_conversion(str(hr_folder), ((p.name, read_info(p).conversion) for p in images))
    if message:
        warnings.warn(message, stacklevel=2)
    lr_root = hr_folder.resolve().parent / 'LR_bicubic'
    written = []
    for path in images:
        hr = read_image(path)
        for s in scales:
            try:
                lr = bicubic_downscale(crop_to_scale(hr, s), s)
            except ValueError as e:
                raise DataError(f'{path}: cannot make its x{s} LR image ({e})') from None
            target = lr_root / f'X{s}' / f'{path.stem}x{s}.png'
            try:
                save_png(target, lr)
            except OSError as e:
                raise DataError(f'{target}: cannot write ({e.strerror or e})') from None
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scales = parse_scales(args.scale)
        written = prepare(args.hr_folder, scales)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {len(written)} LR images under {written[0].parent.parent}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
