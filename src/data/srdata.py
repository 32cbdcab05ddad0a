"""Pairs of HR and LR images checked once at scan time, and the three kinds of torch datasets over them.

A data set module (div2k, benchmark, sample) only says where files should be: a list of
``(HR path, expected LR path)`` for the run's one scale. :func:`scan_pairs` then makes missing LR
images, builds the ``--ext sep`` cache, checks every file (header and completeness, see
``ImageStore.inspect``), and checks sizes, so that bad data stops the run at start-up with a message
naming the file rather than in the middle of an epoch. Images are named by
:func:`data.common.output_names` (the stem, or ``<stem>_<ext>`` when two images of a set share a stem).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core import distributed
from data.common import (
    DataError,
    augment,
    describe_conversion,
    output_names,
    random_patch,
    read_info,
    set_channel,
    to_tensor,
)
from data.storage import ImageStore, available_cores, existing_lr, made_from_other_hr, make_lr_images


class DataWarning(UserWarning):
    """Data that was used after a fix-up (converted pixel format, cropped HR image)."""


def say(msg: str) -> None:
    if distributed.is_main():
        print(msg, flush=True)


def warn(msg: str) -> None:
    if distributed.is_main():
        warnings.warn(msg, DataWarning, stacklevel=3)


@dataclass(frozen=True)
class ImagePair:
    """One HR image and its LR image at the run's scale."""

    name: str  # the name of results and metrics rows: the HR file's stem, '0801', 'baby' (output_names)
    hr: Path
    lr: Path
    hr_size: tuple[int, int]  # (height, width) on disk
    lr_size: tuple[int, int]


def scan_pairs(*, name: str, root: Path, entries: list[tuple[Path, Path]], scale: int,
               store: ImageStore, training: bool, patch_size: int = 0) -> list[ImagePair]:
    """Check and complete the pairs of a data set; DataError naming the file at the first problem.

    Args:
        name: data set name for messages.
        root: the data set folder (the ``--ext sep`` cache goes to ``root/bin``).
        entries: ``(HR path, expected LR path)``; HR paths must exist.
        scale: the scale of the LR images.
        store: reads headers and builds the decoded cache.
        training: the HR image cropped at the bottom/right to a multiple of the scale must be ``LR *
            scale`` (the benchmark convention), and the LR image must hold a patch; for testing an HR
            image larger than ``LR * scale`` is cropped. Crops are reported in one warning per data set.
        patch_size: HR patch size (training only).

    Missing LR images are made with the available cores (storage.make_lr_images), with a progress bar.
    For training, HR images smaller than a patch are left out (counted in the log line of the set).
    """
    skipped = 0
    if training:
        entries, skipped = _holding_a_patch(name, entries, scale, patch_size)
    lr_paths: list[Path | None] = []
    todo: list[int] = []  # indices of the pairs whose LR image is made now
    stale = 0
    for i, (hr, lr) in enumerate(entries):
        existing = existing_lr(lr, hr)
        if existing is not None and made_from_other_hr(existing, hr):
            stale += 1  # made by us from an earlier version of the HR image: made again
            existing = None
        if existing is None:
            todo.append(i)
        lr_paths.append(existing)
    if todo:
        what = [f'{len(todo) - stale} LR image(s) missing'] if len(todo) > stale else []
        what += [f'{stale} LR image(s) out of date (made from an earlier version of their HR image)'] if stale else []
        say(f'{name}: {" and ".join(what)} (e.g. {entries[todo[0]][1]}); making them once from the HR images '
            f'with MATLAB-style bicubic downscaling')
        jobs = [(entries[i][0], [(entries[i][1], scale)]) for i in todo]
        made = make_lr_images(jobs, workers=available_cores(), desc=f'{name}: LR images')
        redirected = set()
        for i, (path,) in zip(todo, made, strict=True):
            lr_paths[i] = path
            lr = entries[i][1]
            if path != lr and path.parent not in redirected:
                redirected.add(path.parent)
                say(f'{name}: {lr.parent} is read-only; its LR images go to {path.parent}')

    conversions: list[tuple[str, str | None]] = []
    cropped: list[str] = []
    built = 0
    pairs = []

    def inspect(path: Path):
        nonlocal built
        info, was_built = store.inspect(path, root)
        if was_built:
            if built == 0:
                say(f'{name}: decoding images into the --ext sep cache (once), e.g. {store.cache_path(path)}')
            built += 1
        conversions.append((path.name, info.conversion))
        return info.height, info.width

    names = output_names([hr for hr, _ in entries])
    for (hr, _), lr, pair_name in zip(entries, lr_paths, names, strict=True):
        hr_size, lr_size = inspect(hr), inspect(lr)
        _check_sizes(name, hr, hr_size, lr, lr_size, scale, training, patch_size, cropped)
        pairs.append(ImagePair(name=pair_name, hr=hr, lr=lr, hr_size=hr_size, lr_size=lr_size))

    _report(name, root, conversions, cropped, built, (len(pairs), skipped) if training else None, patch_size)
    return pairs


def _report(name: str, root: Path, conversions: list, cropped: list[str], built: int,
            training_size: tuple[int, int] | None, patch_size: int) -> None:
    """The scan's warnings and log lines: converted and cropped images, cached ones, and a training set's size."""
    message = describe_conversion(name, conversions)
    if message:
        warn(message)
    if cropped:
        more = f' and {len(cropped) - 1} more' if len(cropped) > 1 else ''
        warn(f'{name}: HR images larger than scale x LR size are cropped at the bottom/right to fit: '
             f'{cropped[0]}{more}')
    if built:
        say(f'{name}: {built} image(s) cached')
    if training_size is not None:
        kept, skipped = training_size
        left_out = f' ({skipped} smaller than the {patch_size}x{patch_size} patch left out)' if skipped else ''
        say(f'{name}: {kept} training image(s) in {root}{left_out}')


def _holding_a_patch(name: str, entries: list[tuple[Path, Path]], scale: int,
                     patch_size: int) -> tuple[list[tuple[Path, Path]], int]:
    """The entries whose HR image, cropped to a multiple of ``scale``, holds an HR patch, and how many
    did not; DataError if none does."""
    kept = []
    for hr, lr in entries:
        info = read_info(hr)
        if min(info.height - info.height % scale, info.width - info.width % scale) >= patch_size:
            kept.append((hr, lr))
    if not kept:
        raise DataError(f'{name}: all {len(entries)} HR image(s) are smaller than the {patch_size}x{patch_size} '
                        f'training patch (--patch_size {patch_size}), e.g. {entries[0][0]}')
    return kept, len(entries) - len(kept)


def _check_sizes(name: str, hr: Path, hr_size: tuple[int, int], lr: Path, lr_size: tuple[int, int], scale: int,
                 training: bool, patch_size: int, cropped: list[str]) -> None:
    (hh, hw), (lh, lw) = hr_size, lr_size
    if (lh * scale, lw * scale) != (hh, hw):
        pair = f'{lr} ({lw}x{lh}) x{scale} = {lw * scale}x{lh * scale} but {hr} is {hw}x{hh}'
        if training and (lh * scale, lw * scale) != (hh - hh % scale, hw - hw % scale):
            raise DataError(f'{name}: {pair}; training needs HR = LR x scale, the HR cropped to a multiple of the '
                            f'scale (remake the LR image from the HR image, or crop the HR image)')
        if lh * scale > hh or lw * scale > hw:
            raise DataError(f'{name}: {pair}; the LR image is too large for its HR image')
        cropped.append(f'{hr.name} {hw}x{hh} -> {lw * scale}x{lh * scale}')
    if training and min(lh, lw) < patch_size // scale:
        raise DataError(f'{name}: {lr} ({lw}x{lh}) is smaller than the LR patch {patch_size // scale}x'
                        f'{patch_size // scale} (--patch_size {patch_size} / --scale {scale})')


def load_as_scanned(store: ImageStore, path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image at ``path``, which must still have the ``(height, width)`` it had at scan time: with
    ``--ext img`` every read decodes the file, and a file replaced since start-up (a smaller or larger
    image) would otherwise fail deep in patch cropping or batching."""
    img = store.load(path)
    if img.shape[:2] != tuple(size):
        raise DataError(f'{path}: changed since start-up: now {img.shape[1]}x{img.shape[0]}, was {size[1]}x{size[0]} '
                        f'when the data was checked; put the original back, or restart the run (it checks the data '
                        f'again; --load <run> --resume -1 continues from the last epoch saved)')
    return img


class TrainPatches(Dataset):
    """Random aligned (LR, HR) patches: an epoch is ``length`` samples cycling through the images.

    Args:
        name: data set name(s), for messages.
        pairs: the checked image pairs at ``scale``.
        store: reads the images.
        scale: the upscaling factor.
        patch_size: HR patch size (a multiple of ``scale``).
        n_colors: 1 (Y) or 3 (RGB).
        rgb_range: values are ``x * rgb_range / 255``.
        augment: random flips and 90-degree rotations.
        length: samples per epoch (``batch_size * test_every``).
        seed: base seed of the patch positions and augmentations.

    Items are addressed as ``(epoch, index)`` (what :class:`data.EpochSampler` yields) or as a plain
    ``index`` (epoch 0). The randomness of an item comes from its own generator seeded with
    ``(seed, epoch, index)``, so a batch does not depend on the number of worker processes, on
    whether they persist between epochs, on the process that loads it, or on an interrupted run
    having been resumed.
    """

    def __init__(self, *, name: str, pairs: list[ImagePair], store: ImageStore, scale: int,
                 patch_size: int, n_colors: int, rgb_range: int, augment: bool, length: int, seed: int) -> None:
        self.name = name
        self.pairs = pairs
        self.store = store
        self.scale = scale
        self.patch_size = patch_size
        self.n_colors = n_colors
        self.rgb_range = rgb_range
        self.augment = augment
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        pair = self.pairs[index % len(self.pairs)]
        lr = load_as_scanned(self.store, pair.lr, pair.lr_size)
        hr = load_as_scanned(self.store, pair.hr, pair.hr_size)
        lr, hr = random_patch(lr, hr, self.patch_size, self.scale, rng)
        if self.augment:
            lr, hr = augment(lr, hr, rng)
        lr, hr = (to_tensor(set_channel(x, self.n_colors), self.rgb_range) for x in (lr, hr))
        return lr, hr, pair.name


class TestImages(Dataset):
    """Whole images of one test set, no augmentation: ``(lr, hr, name)`` with HR cropped to ``LR * scale``.

    Args:
        name: 'Set5', 'DIV2K', 'Sample', ...
        benchmark: True for the benchmark sets (PSNR on Y), False for DIV2K.
        pairs: the checked image pairs at ``scale``.
        store: reads the images.
        scale: the upscaling factor.
        n_colors: 1 (Y) or 3 (RGB).
        rgb_range: values are ``x * rgb_range / 255``.
    """

    def __init__(self, *, name: str, benchmark: bool, pairs: list[ImagePair], store: ImageStore, scale: int,
                 n_colors: int, rgb_range: int) -> None:
        self.name = name
        self.benchmark = benchmark
        self.pairs = pairs
        self.store = store
        self.scale = scale
        self.n_colors = n_colors
        self.rgb_range = rgb_range

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        lr = load_as_scanned(self.store, pair.lr, pair.lr_size)
        hr = load_as_scanned(self.store, pair.hr, pair.hr_size)
        lh, lw = lr.shape[:2]
        hr = hr[:lh * self.scale, :lw * self.scale]
        lr, hr = (to_tensor(set_channel(np.asarray(x), self.n_colors), self.rgb_range) for x in (lr, hr))
        return lr, hr, pair.name


class DemoImages(Dataset):
    """Every image of a folder as an LR input, without HR: ``(lr, empty tensor, name)`` (names as
    :func:`data.common.output_names` gives them).

    Args:
        paths: the image files.
        root: their folder (the ``--ext sep`` cache goes to ``root/bin``).
        store: reads the images.
        n_colors: 1 (Y) or 3 (RGB).
        rgb_range: values are ``x * rgb_range / 255``.
    """

    name = 'Demo'
    benchmark = False

    def __init__(self, *, paths: list[Path], store: ImageStore, n_colors: int, rgb_range: int) -> None:
        self.paths = paths
        self.names = output_names(paths)
        self.store = store
        self.n_colors = n_colors
        self.rgb_range = rgb_range

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        lr = to_tensor(set_channel(np.asarray(self.store.load(path)), self.n_colors), self.rgb_range)
        return lr, torch.empty(0), self.names[index]
