"""DIV2K as distributed: ``<dir_data>/DIV2K/DIV2K_{train,valid}_HR/0001.png`` and
``<dir_data>/DIV2K/DIV2K_{train,valid}_LR_bicubic/X<s>/0001x<s>.png``.

Images are picked by number (``--data_range 1-800/801-810``, 1-based, inclusive): image ``n`` is
``DIV2K_train_HR/<n>.png`` (where EDSR's packaging keeps all 900) or else ``DIV2K_valid_HR/<n>.png``
(the official validation folder holds 0801-0900).
"""

from pathlib import Path

from data.common import DataError, find_image, list_images

LAYOUT = 'DIV2K/DIV2K_train_HR/0001.png and DIV2K/DIV2K_train_LR_bicubic/X2/0001x2.png (X3, X4)'


def root_of(dir_data: Path) -> Path:
    return dir_data / 'DIV2K'


def div2k_entries(dir_data: Path, index_range: tuple[int, int], scale: int) -> list[tuple[Path, Path]]:
    """``(HR, expected LR at scale)`` of DIV2K images ``index_range[0]..index_range[1]``; DataError
    naming the expected path if the folder or an image is missing."""
    root = root_of(dir_data)
    folders = [root / 'DIV2K_train_HR', root / 'DIV2K_valid_HR']
    if not any(f.is_dir() for f in folders):
        raise DataError(f'DIV2K not found: {folders[0]} is not a folder (expected layout under --dir_data '
                        f'{dir_data}: {LAYOUT})')
    if not any(list_images(f) for f in folders if f.is_dir()):
        raise DataError(f'DIV2K: {" and ".join(str(f) for f in folders if f.is_dir())} hold no images '
                        f'(expected {LAYOUT})')
    entries = []
    first, last = index_range
    for number in range(first, last + 1):
        stem = f'{number:04d}'
        hr = next((p for p in (find_image(f, stem) for f in folders if f.is_dir()) if p is not None), None)
        if hr is None:
            raise DataError(f'DIV2K image {stem} (--data_range: {first}-{last}) not found: expected '
                            f'{folders[0] / (stem + ".png")} or {folders[1] / (stem + ".png")}')
        part = 'train' if hr.parent == folders[0] else 'valid'
        lr_root = root / f'DIV2K_{part}_LR_bicubic'
        entries.append((hr, lr_root / f'X{scale}' / f'{stem}x{scale}.png'))
    return entries
