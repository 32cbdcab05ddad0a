"""Benchmark sets as EDSR packages them: ``<dir_data>/benchmark/<Name>/HR/<img>.png`` and
``<dir_data>/benchmark/<Name>/LR_bicubic/X<s>/<img>x<s>.png``. The built-in Sample set uses the same
layout (see data.sample).
"""

from pathlib import Path

from data.common import DataError, list_images

BENCHMARK_SETS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')


def root_of(dir_data: Path, name: str) -> Path:
    return dir_data / 'benchmark' / name


def folder_entries(name: str, root: Path, scale: int) -> list[tuple[Path, Path]]:
    """``(HR, expected LR at scale)`` of every image in ``root/HR``; DataError naming the expected
    path if the folder is missing or empty."""
    hr_dir = root / 'HR'
    layout = f'{hr_dir}/<image>.png with {root}/LR_bicubic/X<s>/<image>x<s>.png'
    if not hr_dir.is_dir():
        raise DataError(f'{name} not found: {hr_dir} is not a folder (expected layout: {layout})')
    images = list_images(hr_dir)
    if not images:
        raise DataError(f'{name}: {hr_dir} holds no images (expected layout: {layout})')
    return [(hr, root / 'LR_bicubic' / f'X{scale}' / f'{hr.stem}x{scale}.png') for hr in images]
