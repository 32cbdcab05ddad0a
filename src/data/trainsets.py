"""Training sets by name (``--data_train``): where each one's HR images are and where its LR images go.

Layouts under ``--dir_data`` (a named set is looked up at ``<dir_data>/<set>``, then at
``<dir_data>/train/<set>``, so one ``--dir_data`` can hold ``train/`` beside ``benchmark/``):

- ``T91``, ``BSD200``, ``General100``: ``<set>/HR/<image>.png``; LR images are
  ``<set>/LR_bicubic/X<s>/<image>x<s>.png`` (the benchmark sets' layout), made on demand.
- ``SR291``: T91 + BSD200, the "291 images" of VDSR, DRRN and LapSRN.
- ``DIV2K``: data.div2k (``--data_range`` picks its images).
- ``Flickr2K``: as distributed, ``Flickr2K/Flickr2K_HR/000001.png`` with
  ``Flickr2K/Flickr2K_LR_bicubic/X<s>/000001x<s>.png``; every image is used.
- ``DF2K``: DIV2K (its ``--data_range`` images) + Flickr2K.
- ``Folder``: any folder of HR images, ``--dir_train PATH`` (the images in ``PATH/HR`` if that folder
  exists, else those in ``PATH``); LR images go to ``PATH/LR_bicubic/X<s>/``.
- ``Sample``: the built-in photographs (data.sample).

Missing LR images are made with MATLAB-exact bicubic downscaling; when the folder is read-only they
go to the per-user cache instead (data.storage), so nothing is written into the data.
"""

from pathlib import Path

from data import benchmark, div2k, sample
from data.common import DataError, list_images, output_names

# Sets in the benchmark layout, <set>/HR/<image>.png.
HR_FOLDER_SETS = ('T91', 'BSD200', 'General100')
# Names that stand for several sets.
COMBINED = {'SR291': ('T91', 'BSD200'), 'DF2K': ('DIV2K', 'Flickr2K')}
TRAIN_SETS = ('DIV2K', 'Flickr2K', 'DF2K') + HR_FOLDER_SETS + ('SR291', 'Folder', 'Sample')

LAYOUTS = ('T91, BSD200, General100: <dir_data>/<set>/HR/*.png (or <dir_data>/train/<set>/HR); '
           'SR291 = T91+BSD200; DIV2K: <dir_data>/DIV2K/DIV2K_train_HR; Flickr2K: <dir_data>/Flickr2K/Flickr2K_HR; '
           'DF2K = DIV2K+Flickr2K; Folder: the HR images in --dir_train PATH')


def expand(names: list[str]) -> list[str]:
    """The single sets that ``names`` stand for, in order, each once (``SR291+T91`` is T91, BSD200)."""
    out: list[str] = []
    for name in names:
        for part in COMBINED.get(name, (name,)):
            if part not in out:
                out.append(part)
    return out


def set_folder(dir_data: Path, name: str) -> Path:
    """``<dir_data>/<name>``, or ``<dir_data>/train/<name>`` when only that one exists."""
    direct = dir_data / name
    nested = dir_data / 'train' / name
    return nested if not direct.is_dir() and nested.is_dir() else direct


def flickr2k_entries(dir_data: Path, scale: int) -> tuple[Path, list[tuple[Path, Path]]]:
    root = set_folder(dir_data, 'Flickr2K')
    hr_dir = root / 'Flickr2K_HR'
    layout = f'{hr_dir}/000001.png with {root}/Flickr2K_LR_bicubic/X{scale}/000001x{scale}.png'
    if not hr_dir.is_dir():
        raise DataError(f'Flickr2K not found: {hr_dir} is not a folder (expected layout: {layout})')
    images = list_images(hr_dir)
    if not images:
        raise DataError(f'Flickr2K: {hr_dir} holds no images (expected layout: {layout})')
    lr_dir = root / 'Flickr2K_LR_bicubic' / f'X{scale}'
    return root, [(hr, lr_dir / f'{hr.stem}x{scale}{hr.suffix}') for hr in images]


def folder_entries(dir_train: Path, scale: int) -> tuple[Path, list[tuple[Path, Path]]]:
    """``--data_train Folder``: the images of ``dir_train/HR`` or, without that folder, of ``dir_train``."""
    if not dir_train.is_dir():
        raise DataError(f'--dir_train {dir_train}: not a folder (give a folder of HR images)')
    if (dir_train / 'HR').is_dir():
        return dir_train, benchmark.folder_entries(f'--dir_train {dir_train}', dir_train, scale)
    images = list_images(dir_train)
    if not images:
        raise DataError(f'--dir_train {dir_train}: holds no images (give a folder of HR images, or one with HR/)')
    lr_dir = dir_train / 'LR_bicubic' / f'X{scale}'
    return dir_train, [(hr, lr_dir / f'{stem}x{scale}.png')
                       for hr, stem in zip(images, output_names(images), strict=True)]


def entries_of(name: str, *, dir_data: Path, dir_train: Path, data_range: tuple[int, int],
               scale: int, say=print) -> tuple[Path, list[tuple[Path, Path]]]:
    """``(set folder, [(HR path, expected LR path)])`` of the single training set ``name``; DataError
    naming the expected folder if it is missing or empty."""
    if name == 'DIV2K':
        return div2k.root_of(dir_data), div2k.div2k_entries(dir_data, data_range, scale)
    if name == 'Flickr2K':
        return flickr2k_entries(dir_data, scale)
    if name == 'Folder':
        return folder_entries(dir_train, scale)
    if name == 'Sample':
        sample.ensure_sample(dir_data, say=say)
        root = sample.train_root(dir_data)
        return root, benchmark.folder_entries('Sample', root, scale)
    if name in HR_FOLDER_SETS:
        root = set_folder(dir_data, name)
        return root, benchmark.folder_entries(name, root, scale)
    raise DataError(f'--data_train {name}: not a training set (known: {", ".join(TRAIN_SETS)}; {LAYOUTS})')
