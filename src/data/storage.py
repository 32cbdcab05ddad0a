"""Files the data code writes: the decoded-image cache of ``--ext sep`` and LR images made from HR ones.

Both go next to the data when its folder is writable, else into a per-user cache folder:

- ``--ext sep``: ``<set>/bin/<folder>/<file name>.npy`` mirroring the set's folders (e.g.
  ``DIV2K/bin/DIV2K_train_HR/0001.png.npy``; the image's extension is part of the name, so ``a.png``
  and ``a.jpg`` have caches of their own); if ``<set>`` is read-only,
  ``$XDG_CACHE_HOME/lcoan-pytorch/sep/<absolute path of the image>.npy`` (``~/.cache`` without XDG_CACHE_HOME).
  Beside each cache file, ``<file name>.stamp`` records the image's size and modification time (ns)
  when it was decoded; the cache is rebuilt whenever either differs (a new image, also one older than
  the cache, as ``cp -p``, ``tar`` and ``rsync -a`` leave it). ``--ext sep_reset`` rebuilds them all.
- missing LR images: ``<set>/LR_bicubic/X<s>/<name>x<s>.png`` (the layout's own place); if that is
  read-only, ``$XDG_CACHE_HOME/lcoan-pytorch/lr/<absolute path of that LR file>``. A made LR image records its
  HR image's size and modification time in a PNG text chunk (``lcoan-hr``) and is made again when they
  change; LR images without it are the user's and are used as they are.

Every file is written by :func:`io_utils.atomic_write` (a temporary name, fsync, rename), so a crash
or two processes writing the same file never leave a partial file behind. Making LR images takes ~1 s
per 2K image and scale, so many of them are made in a process pool (:func:`make_lr_images`).
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from core.io_utils import atomic_write, make_folder_for_data
from data.common import DataError, ImageInfo, check_image, find_image, read_image, read_info
from data.imresize import bicubic_downscale, crop_to_scale

# Below this much work (HR pixels x scales, ~0.3 s per Mpx on one core) LR images are made in this
# process; a pool's start and transfers cost more than they save on a few small images.
POOL_MIN_PIXELS = 2_000_000
STAMP_KEY = 'lcoan-hr'  # PNG text chunk of a made LR image: its HR image's stamp


# This program's folder under the per-user cache.
CACHE_FOLDER = 'lcoan-pytorch'


def cache_home() -> Path:
    """The per-user cache folder for data made from read-only data folders."""
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / CACHE_FOLDER


def mirrored(base: Path, path: Path) -> Path:
    """``base`` followed by the absolute path of ``path`` (so every data folder gets its own subtree)."""
    absolute = path.resolve()
    return base / absolute.relative_to(absolute.anchor)


def save_png(path: Path, img: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write ``img`` as a PNG (making its folders) atomically, with ``text`` as PNG text chunks; OSError if
    that place is not writable."""
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    make_folder_for_data(path.parent)
    atomic_write(path, lambda f: Image.fromarray(img).save(f, format='PNG', compress_level=3, pnginfo=info))


def file_stamp(path: Path) -> str:
    """``'<size> <mtime in ns>'`` of ``path``: what a file made from it records to notice a change."""
    st = path.stat()
    return f'{st.st_size} {st.st_mtime_ns}'


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# LR images made from HR images


def fallback_lr_path(expected: Path) -> Path:
    return mirrored(cache_home() / 'lr', expected)


def make_lr(hr: Path, expected: Path, scale: int) -> Path:
    """Write MATLAB-bicubic ``hr`` / ``scale`` (HR cropped to a multiple of ``scale``) to ``expected``, or to
    the cache folder when that place is read-only; returns where it went."""
    return _make_lrs(hr, [(expected, scale)])[0]


def _make_lrs(hr: Path, targets: list[tuple[Path, int]], fallback: bool = True) -> list[Path]:
    """:func:`make_lr` for several ``(expected, scale)`` of one HR image, decoding it once; with
    ``fallback`` False, an LR image that cannot be written where expected is an error."""
    stamp = file_stamp(hr)  # before reading: a change while we read shows as a stale stamp next time
    img = read_image(hr)
    made = []
    for expected, scale in targets:
        try:
            lr = bicubic_downscale(crop_to_scale(img, scale), scale)
        except ValueError as e:
            raise DataError(f'{hr}: cannot make its x{scale} LR image ({e})') from None
        if not fallback:
            try:
                save_png(expected, lr, {STAMP_KEY: stamp})
            except OSError as e:
                raise DataError(f'{expected}: cannot write ({e.strerror or e})') from None
            made.append(expected)
            continue
        elsewhere = fallback_lr_path(expected)
        for target in (expected, elsewhere):
            try:
                save_png(target, lr, {STAMP_KEY: stamp})
                made.append(target)
                break
            except OSError:
                continue
        else:
            raise DataError(f'{hr}: its LR image {expected} is missing and cannot be written there or in '
                            f'{elsewhere.parent}')
    return made


def _one_thread() -> None:
    torch.set_num_threads(1)  # a pool process: the processes share the cores


def make_lr_images(jobs: list[tuple[Path, list[tuple[Path, int]]]], *, workers: int, pool: bool | None = None,
                   desc: str = 'making LR images', fallback: bool = True) -> list[list[Path]]:
    """Make the LR images of ``jobs`` (``(HR path, [(expected LR path, scale), ...])``) as :func:`make_lr`
    does, with a progress bar; returns the paths written, job by job.

    Args:
        jobs: the HR images and their LR images to make.
        workers: processes for the pool (e.g. :func:`available_cores`).
        pool: True: a pool of ``workers`` processes; False: this process; None: a pool only when
            ``workers > 1`` and the work (HR pixels x scales) is at least ``POOL_MIN_PIXELS``. The files
            are the same byte for byte either way.
        desc: the progress bar's label.
        fallback: write an LR image into the per-user cache folder when its place is read-only;
            False: that is an error naming the file.
    """
    if pool is None:
        work = 0
        for hr, targets in jobs:
            info = read_info(hr)
            work += info.height * info.width * len(targets)
        pool = workers > 1 and len(jobs) > 1 and work >= POOL_MIN_PIXELS
    results: list[list[Path] | None] = [None] * len(jobs)
    with tqdm(total=sum(len(t) for _, t in jobs), desc=desc, ncols=80, unit='img', disable=None) as bar:
        if not pool:
            for k, (hr, targets) in enumerate(jobs):
                results[k] = _make_lrs(hr, targets, fallback)
                bar.update(len(targets))
            return results
        # fork where there is one, as DataLoader workers are made: a fresh interpreter would spend
        # seconds importing torch. A forked child runs torch on one thread (_one_thread), so the
        # parent's OpenMP pool, which does not survive a fork, is never entered.
        context = multiprocessing.get_context('fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn')
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                 initializer=_one_thread) as executor:
            futures = {executor.submit(_make_lrs, hr, targets, fallback): k for k, (hr, targets) in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    k = futures[future]
                    results[k] = future.result()
                    bar.update(len(jobs[k][1]))
            except BaseException:
                executor.shutdown(wait=True, cancel_futures=True)
                raise
    return results


def made_from_other_hr(lr: Path, hr: Path) -> bool:
    """Whether ``lr`` is an LR image we made from an earlier version of ``hr`` (its stamp differs)."""
    try:
        with Image.open(lr) as img:
            stamp = img.info.get(STAMP_KEY)
        return stamp is not None and stamp != file_stamp(hr)
    except (OSError, SyntaxError, ValueError):
        return False  # unreadable: the scan reports it, naming the file


def existing_lr(expected: Path, hr: Path) -> Path | None:
    """The LR image at ``expected`` (that exact file, else any image extension), or one made earlier into
    the cache folder from the current ``hr``."""
    if expected.is_file():
        return expected
    found = find_image(expected.parent, expected.stem)
    if found is not None:
        return found
    fallback = fallback_lr_path(expected)
    try:
        with Image.open(fallback) as img:
            fresh = img.info.get(STAMP_KEY) == file_stamp(hr)
    except (OSError, SyntaxError, ValueError):
        return None
    return fallback if fresh else None


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
            relative = path.resolve().relative_to(root.resolve())
            places.append(root / 'bin' / relative.with_name(relative.name + '.npy'))
        places.append(mirrored(cache_home() / 'sep', path.with_name(path.name + '.npy')))
        return places

    @staticmethod
    def stamp_path(npy: Path) -> Path:
        """Where the stamp of the image cached in ``npy`` is kept."""
        return npy.with_suffix('.stamp')

    def inspect(self, path: Path, root: Path) -> tuple[ImageInfo, bool]:
        """The header of ``path``; with the cache on, also make sure its cache file is there and fresh.

        Returns the header and whether a cache file was (re)built. Raises DataError naming ``path`` if
        the image cannot be read: a corrupt or truncated image is found here, at scan time, whatever
        ``--ext`` is (without the cache by :func:`data.common.check_image`; with it by decoding it into
        the cache, or from a cache that was decoded from this very file).
        """
        info = read_info(path)
        if not self.use_cache:
            check_image(path)
            return info, False
        locations = self.cache_locations(path, root)
        stamp = file_stamp(path)  # before decoding: a change while we decode shows next time
        if not (self.reset and path not in self._rebuilt):
            for npy in locations:
                if self._stamp_matches(npy, stamp) and self._cache_matches(npy, info):
                    self._cache[path] = npy
                    return info, False
        img = read_image(path)
        if img.shape[:2] != (info.height, info.width):
            raise DataError(f'{path}: decoded size {img.shape[1]}x{img.shape[0]} differs from its header')
        for npy in locations:
            try:
                make_folder_for_data(npy.parent)
                atomic_write(npy, lambda f: np.save(f, img))
                atomic_write(self.stamp_path(npy), lambda f: f.write(stamp.encode()))
            except OSError:
                continue
            self._cache[path] = npy
            self._rebuilt.add(path)
            return info, True
        raise DataError(f'{path}: cannot write its --ext sep cache to {" or ".join(map(str, locations))}')

    def _stamp_matches(self, npy: Path, stamp: str) -> bool:
        try:
            return self.stamp_path(npy).read_text() == stamp
        except (OSError, UnicodeDecodeError):
            return False

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
