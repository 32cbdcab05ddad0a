"""Benchmark sets as EDSR packages them: ``<dir_data>/benchmark/<Name>/HR/<img>.png`` and
``<dir_data>/benchmark/<Name>/LR_bicubic/X<s>/<img>x<s>.png``. The built-in Sample set uses the same
layout (see data.sample).

``<img>`` is the HR image's name (data.common.output_names): its stem, or ``<stem>_<ext>`` when two HR
images share a stem (``a.png``, ``a.jpg`` -> ``a_pngx2.png``, ``a_jpgx2.png``). For those, an LR
image with the stem and the HR image's own extension (``ax2.png`` for ``a.png``) is its partner too.
"""

from pathlib import Path

from data.common import DataError, list_images, output_names

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
    entries = []
    folder = root / 'LR_bicubic' / f'X{scale}'
    for hr, stem in zip(images, output_names(images), strict=True):
        own = folder / f'{hr.stem}x{scale}{hr.suffix}'
        entries.append((hr, own if stem != hr.stem and own.is_file() else folder / f'{stem}x{scale}.png'))
    return entries
