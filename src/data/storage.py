"""Files the data code writes: the decoded-image cache of ``--ext sep`` and LR images made from HR ones.

Both go next to the data when its folder is writable, else into a per-user cache folder:

- ``--ext sep``: ``<set>/bin/<folder>/<name>.npy`` mirroring the set's folders (e.g.
  ``DIV2K/bin/DIV2K_train_HR/0001.npy``); if ``<set>`` is read-only,
  ``$XDG_CACHE_HOME/lcoan/sep/<absolute path of the image>.npy`` (``~/.cache`` without XDG_CACHE_HOME).
  A cache file older than its image is rebuilt; ``--ext sep_reset`` rebuilds them all.
- missing LR images: ``<set>/LR_bicubic/X<s>/<name>x<s>.png`` (the layout's own place); if that is
  read-only, ``$XDG_CACHE_HOME/lcoan/lr/<absolute path of that LR file>``.

Every file is written by :func:`io_utils.atomic_write` (a temporary name, fsync, rename), so a crash
or two processes writing the same file never leave a partial file behind.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from data.common import DataError, ImageInfo, find_image, read_image, read_info
from data.imresize import bicubic_downscale, crop_to_scale
from io_utils import atomic_write


def cache_home() -> Path:
    """The per-user cache folder for data made from read-only data folders."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'lcoan'


def mirrored(base: Path, path: Path) -> Path:
    """``base`` followed by the absolute path of ``path`` (so every data folder gets its own subtree)."""
    absolute = path.resolve()
    return base / absolute.relative_to(absolute.anchor)


def save_png(path: Path, img: np.ndarray) -> None:
    """Write ``img`` to ``path`` (making its folders) atomically; OSError if that place is not writable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: Image.fromarray(img).save(f, format='PNG', compress_level=3))


def _newer_or_same(target: Path, source: Path) -> bool:
    try:
        return target.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# LR images made from HR images


def fallback_lr_path(expected: Path) -> Path:
    return mirrored(cache_home() / 'lr', expected)


def make_lr(hr: Path, expected: Path, scale: int) -> Path:
    """Write MATLAB-bicubic ``hr`` / ``scale`` (HR cropped to a multiple of ``scale``) to ``expected``, or to
    the cache folder when that place is read-only; returns where it went."""
    img = read_image(hr)
    try:
        lr = bicubic_downscale(crop_to_scale(img, scale), scale)
    except ValueError as e:
        raise DataError(f'{hr}: cannot make its x{scale} LR image ({e})') from None
    fallback = fallback_lr_path(expected)
    for target in (expected, fallback):
        try:
            save_png(target, lr)
            return target
        except OSError:
            continue
    raise DataError(f'{hr}: its LR image {expected} is missing and cannot be written there or in {fallback.parent}')


def existing_lr(expected: Path, hr: Path) -> Path | None:
    """The LR image at ``expected`` (any image extension), or one made earlier into the cache folder."""
    found = find_image(expected.parent, expected.stem)
    if found is not None:
        return found
    fallback = fallback_lr_path(expected)
    if fallback.is_file() and _newer_or_same(fallback, hr):
        return fallback
    return None


# ----------------------------------------------------------------------------------------------
# reading images, from the files or from the decoded cache


class ImageStore:
    """Reads images as (H, W, 3) uint8 RGB arrays, decoding the files (``--ext img``) or memory-mapping the
    decoded ``.npy`` cache (``--ext sep``/``sep_reset``), which :meth:`inspect` builds at scan time.

    Args:
        ext: ``'img'``, ``'sep'`` or ``'sep_reset'`` (``--ext``).
    """

    def __init__(self, *, ext: str) -> None:
        if ext not in ('img', 'sep', 'sep_reset'):
            raise ValueError(f'unknown ext {ext!r}')
        self.use_cache = ext != 'img'
        self.reset = ext == 'sep_reset'
        self._cache: dict[Path, Path] = {}
        self._rebuilt: set[Path] = set()  # sep_reset rebuilds each file once per run

    def cache_locations(self, path: Path, root: Path) -> list[Path]:
        """Where the cache of ``path`` may live, in order of preference: beside the data
        (``root/bin/...``, when ``path`` is under the data set folder ``root``), then the per-user folder."""
        places = []
        if path.resolve().is_relative_to(root.resolve()):
            places.append(root / 'bin' / path.resolve().relative_to(root.resolve()).with_suffix('.npy'))
        places.append(mirrored(cache_home() / 'sep', path.with_suffix('.npy')))
        return places

    def inspect(self, path: Path, root: Path) -> tuple[ImageInfo, bool]:
        """The header of ``path``; with the cache on, also make sure its cache file is there and fresh.

        Returns the header and whether a cache file was (re)built. Raises DataError naming ``path`` if
        the image cannot be read (with the cache on, a corrupt image is found here, at scan time).
        """
        info = read_info(path)
        if not self.use_cache:
            return info, False
        locations = self.cache_locations(path, root)
        if not (self.reset and path not in self._rebuilt):
            for npy in locations:
                if _newer_or_same(npy, path) and self._cache_matches(npy, info):
                    self._cache[path] = npy
                    return info, False
        img = read_image(path)
        if img.shape[:2] != (info.height, info.width):
            raise DataError(f'{path}: decoded size {img.shape[1]}x{img.shape[0]} differs from its header')
        for npy in locations:
            try:
                npy.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(npy, lambda f: np.save(f, img))
            except OSError:
                continue
            self._cache[path] = npy
            self._rebuilt.add(path)
            return info, True
        raise DataError(f'{path}: cannot write its --ext sep cache to {" or ".join(map(str, locations))}')

    @staticmethod
    def _cache_matches(npy: Path, info: ImageInfo) -> bool:
        try:
            arr = np.load(npy, mmap_mode='r')
        except (OSError, ValueError):
            return False
        return arr.dtype == np.uint8 and arr.shape == (info.height, info.width, 3)

    def cache_path(self, path: Path) -> Path | None:
        return self._cache.get(path)

    def load(self, path: Path) -> np.ndarray:
        """The image at ``path`` as (H, W, 3) uint8 (a read-only memory map with the cache on)."""
        if self.use_cache:
            npy = self._cache.get(path)
            if npy is None:
                raise RuntimeError(f'{path} was not inspected before loading')
            try:
                return np.load(npy, mmap_mode='r')
            except (OSError, ValueError) as e:
                raise DataError(f'{npy}: unreadable --ext sep cache of {path} ({e}); rerun with --ext sep_reset') \
                    from None
        return read_image(path)
