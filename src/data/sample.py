"""The built-in Sample data set: photographs that ship inside scikit-image, for ``make demo`` and tests.

Train and test parts are different photographs (nothing of a test photograph is trained on):

- train (``<dir_data>/SampleTrain``): astronaut, coffee, rocket, the left view of
  stereo_motorcycle, immunohistochemistry (colour) and page, brick (grayscale, made RGB); whole
  photographs cropped to multiples of 12, 180x384 to 492x732 pixels;
- test (``<dir_data>/benchmark/Sample``): 192x240 crops of chelsea (colour), camera and coins
  (grayscale, made RGB).

Both parts use the benchmark layout (``HR/<name>.png``, ``LR_bicubic/X<s>/<name>x<s>.png`` for
s = 2, 3, 4, made with MATLAB-style bicubic downscaling), so the loader reads them as real data. They
are written once, at first use; a part whose ``.complete`` marker is missing or out of date (an
interrupted build, a newer version of this list) is rebuilt.
"""

from pathlib import Path

import numpy as np
import skimage.data

from core.io_utils import atomic_write
from data.common import DataError
from data.imresize import bicubic_downscale, crop_to_scale
from data.storage import save_png

SCALES = (2, 3, 4)
MULTIPLE = 12  # every size a multiple of 2, 3 and 4, so that LR x scale == HR for all scales
VERSION = 'lcoan-sample-v1'

# name -> (skimage.data loader, crop (top, left, height, width) or None for the whole photograph)
TRAIN_PHOTOS = {
    'astronaut': ('astronaut', None),
    'coffee': ('coffee', None),
    'rocket': ('rocket', None),
    'motorcycle': ('stereo_motorcycle', None),
    'immunohistochemistry': ('immunohistochemistry', None),
    'page': ('page', None),
    'brick': ('brick', None),
}
TEST_PHOTOS = {
    'chelsea': ('chelsea', (40, 120, 192, 240)),
    'camera': ('camera', (40, 150, 192, 240)),
    'coins': ('coins', (40, 60, 192, 240)),
}


def train_root(dir_data: Path) -> Path:
    return dir_data / 'SampleTrain'


def test_root(dir_data: Path) -> Path:
    return dir_data / 'benchmark' / 'Sample'


def photograph(loader: str, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """A scikit-image photograph as (H, W, 3) uint8 RGB, cropped, with sides a multiple of 12."""
    img = getattr(skimage.data, loader)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if crop is not None:
        top, left, height, width = crop
        img = img[top:top + height, left:left + width]
    return np.ascontiguousarray(crop_to_scale(img, MULTIPLE), dtype=np.uint8)


def _files(root: Path, photos: dict) -> list[Path]:
    files = [root / 'HR' / f'{name}.png' for name in photos]
    files += [root / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png' for s in SCALES for name in photos]
    return files


def _marker_text(root: Path, photos: dict) -> str:
    return '\n'.join([VERSION] + [str(p.relative_to(root)) for p in _files(root, photos)]) + '\n'


def is_complete(root: Path, photos: dict) -> bool:
    marker = root / '.complete'
    try:
        if marker.read_text() != _marker_text(root, photos):
            return False
    except OSError:
        return False
    return all(p.is_file() for p in _files(root, photos))


def _build(root: Path, photos: dict) -> None:
    (root / '.complete').unlink(missing_ok=True)
    for name, (loader, crop) in photos.items():
        hr = photograph(loader, crop)
        save_png(root / 'HR' / f'{name}.png', hr)
        for s in SCALES:
            save_png(root / 'LR_bicubic' / f'X{s}' / f'{name}x{s}.png', bicubic_downscale(hr, s))
    text = _marker_text(root, photos)
    atomic_write(root / '.complete', lambda f: f.write(text.encode()))


def ensure_sample(dir_data: Path, *, say=print) -> None:
    """Write the Sample set under ``dir_data`` unless it is there and complete."""
    parts = ((train_root(dir_data), TRAIN_PHOTOS), (test_root(dir_data), TEST_PHOTOS))
    todo = [(root, photos) for root, photos in parts if not is_complete(root, photos)]
    if not todo:
        return
    say(f'Sample: writing the built-in data set from scikit-image photographs to {", ".join(str(r) for r, _ in todo)} '
        f'(once)')
    for root, photos in todo:
        try:
            _build(root, photos)
        except OSError as e:
            raise DataError(f'Sample: cannot write the built-in data set to {root} ({e.strerror or e}); '
                            f'give a writable --dir_data') from None
