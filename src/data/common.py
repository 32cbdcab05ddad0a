"""Image files in, training patches and tensors out: reading, colour conversion, patches, augmentation.

Every image becomes an (H, W, 3) uint8 RGB array when it is read; anything else on disk (grayscale,
RGBA, palette, 16-bit) is converted, and the scan of a data set warns once about it (see
:func:`describe_conversion`). Tensors are float32 (C, H, W) on the 8-bit grid scaled to
``[0, rgb_range]``.
"""

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.errors import UserError
from metrics import Y_COEFFS

IMAGE_EXTS = ('.png', '.bmp', '.jpg', '.jpeg', '.tif', '.tiff', '.ppm', '.pgm', '.webp')

_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
# What Pillow raises for a damaged or hostile file, depending on the format and where it breaks.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


class DataError(UserError):
    """A data set or image the user must fix; the message names the file or folder.

    A DataLoader worker's exception reaches the main process as ``DataError(banner + traceback)``
    (torch rebuilds the exception from its text). The constructor recognises that text and keeps the
    original one-line message, so ``main.py`` still prints one line that names the file.
    """

    def __init__(self, message: str) -> None:
        cls = type(self)
        tail = f'{cls.__module__}.{cls.__qualname__}: '
        if message.startswith(f'Caught {cls.__name__} in DataLoader worker') and tail in message:
            where = message.split('\n', 1)[0].removeprefix(f'Caught {cls.__name__} ').rstrip('.')
            message = f'{message[message.rindex(tail) + len(tail):].strip()} ({where})'
        super().__init__(message)


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says: its size and, if it is not 8-bit RGB, what it is."""

    height: int
    width: int
    conversion: str | None  # None for 8-bit RGB, else e.g. 'grayscale', 'RGBA', 'palette', '16-bit'


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def output_names(paths: list[Path]) -> list[str]:
    """The name of each image in its data set: what its results, metrics rows and made LR images are called.

    An image's name is its stem (``baby.png`` -> ``baby``) unless another image of the set has the same
    stem up to case (``a.png`` and ``a.jpg``, or ``a.png`` and ``A.png``, which are one file name on
    macOS and Windows); those are named ``<stem>_<extension>`` (``a_png``, ``a_jpg``). A name that still
    clashes gets ``_2``, ``_3``, ... in the order of ``paths``.
    """
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem.casefold()] = stems.get(p.stem.casefold(), 0) + 1
    taken: set[str] = set()
    names = []
    for p in paths:
        base = p.stem if stems[p.stem.casefold()] == 1 else f'{p.stem}_{p.suffix.lstrip(".")}'
        name, k = base, 2
        while name.casefold() in taken:
            name, k = f'{base}_{k}', k + 1
        taken.add(name.casefold())
        names.append(name)
    return names


def find_image(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.png``, else ``folder/<stem>.<another image extension>``, else None."""
    for ext in IMAGE_EXTS:
        for candidate in (folder / f'{stem}{ext}', folder / f'{stem}{ext.upper()}'):
            if candidate.is_file():
                return candidate
    return None


def _conversion(img: Image.Image) -> str | None:
    mode = img.mode
    if mode == 'RGB':
        # Pillow opens 48-bit PNGs as RGB (keeping the high byte); the tile's raw mode tells.
        raw = [t[3] for t in getattr(img, 'tile', ()) if len(t) > 3]
        return '16-bit' if any(isinstance(r, str) and ';16' in r for r in raw) else None
    if mode in ('L', '1', 'LA', 'La'):
        return 'grayscale'
    if mode in ('P', 'PA'):
        return 'palette'
    if mode in _SIXTEEN_BIT_MODES:
        return '16-bit'
    return mode  # RGBA, CMYK, YCbCr, ...


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f'{path}: no such image file') from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as e:
        raise DataError(f'{path}: not a readable image ({_reason(e)})') from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def read_info(path: Path) -> ImageInfo:
    """Size and pixel format from the header only (no decoding); DataError naming ``path`` if unreadable."""
    with _open(path) as img:
        return ImageInfo(height=img.height, width=img.width, conversion=_conversion(img))


def check_image(path: Path) -> None:
    """Make sure the whole of ``path`` is there and intact without decoding its pixels where the format
    allows; DataError naming ``path`` if not.

    PNG: every chunk is read up to IEND and its CRC checked (Pillow's ``verify``), which finds a
    truncated or damaged file at the cost of reading it. JPEG: a file that ends with the end-of-image
    marker is complete; one that does not (truncated, or with data appended) is decoded. Other formats
    are decoded.
    """
    with _open(path) as img:
        fmt = img.format
        try:
            if fmt == 'PNG':
                img.verify()
                return
            if fmt == 'JPEG' and _ends_with(path, b'\xff\xd9'):
                return
            img.load()
        except _DECODE_ERRORS as e:
            raise DataError(f'{path}: corrupt or truncated image ({_reason(e)})') from None


def _ends_with(path: Path, tail: bytes) -> bool:
    with open(path, 'rb') as f:
        f.seek(0, 2)
        if f.tell() < len(tail):
            return False
        f.seek(-len(tail), 2)
        return f.read() == tail


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` into an (H, W, 3) uint8 RGB array; DataError naming ``path`` if it is corrupt."""
    with _open(path) as img:
        try:
            img.load()
            return to_rgb8(img, path)
        except _DECODE_ERRORS as e:
            raise DataError(f'{path}: corrupt or truncated image ({_reason(e)})') from None


def to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """A loaded Pillow image (from ``path``) as (H, W, 3) uint8 RGB: gray replicated, alpha dropped, palette
    looked up, 16-bit gray rounded from x / 257 (MATLAB's im2uint8); 48-bit RGB PNGs come from Pillow
    already reduced to their high byte."""
    mode = img.mode
    if mode == 'RGB':
        arr = np.asarray(img)
    elif mode in _SIXTEEN_BIT_MODES:
        # MATLAB's im2uint8: round(x / 257) maps 0..65535 onto 0..255.
        wide = np.asarray(img).astype(np.float64)
        gray = np.clip(np.floor(wide / 257 + 0.5), 0, 255).astype(np.uint8)
        arr = np.repeat(gray[..., None], 3, axis=2)
    elif mode in ('L', 'LA', 'La', '1'):
        gray = np.asarray(img.convert('L'))
        arr = np.repeat(gray[..., None], 3, axis=2)
    elif mode == 'F':
        raise DataError(f'{path}: floating-point images are not supported; save it as 8- or 16-bit')
    else:
        arr = np.asarray(img.convert('RGB'))
    return np.ascontiguousarray(arr, dtype=np.uint8)


def describe_conversion(dataset: str, conversions: Iterable[tuple[str, str | None]]) -> str | None:
    """The one warning of a data set whose images are not all 8-bit RGB, from (file name, conversion
    or None) pairs; None when nothing is converted."""
    converted: dict[str, list[str]] = {}
    for name, kind in conversions:
        if kind is not None:
            converted.setdefault(kind, []).append(name)
    if not converted:
        return None
    parts = []
    for kind, names in sorted(converted.items()):
        shown = ', '.join(names[:3]) + (f' and {len(names) - 3} more' if len(names) > 3 else '')
        parts.append(f'{len(names)} {kind} ({shown})')
    return f'{dataset}: converted to 8-bit RGB on reading: {"; ".join(parts)}'


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 1) uint8 luma, MATLAB rgb2ycbcr's Y rounded as it rounds.

    The coefficients are the metrics' (:data:`metrics.Y_COEFFS`), so ``--n_colors 1`` trains on the Y
    that PSNR and SSIM measure.
    """
    rgb = img.astype(np.float64)
    y = 16 + (Y_COEFFS[0] * rgb[..., 0] + Y_COEFFS[1] * rgb[..., 1] + Y_COEFFS[2] * rgb[..., 2]) / 256
    return np.floor(y + 0.5).clip(0, 255).astype(np.uint8)[..., None]


def set_channel(img: np.ndarray, n_colors: int) -> np.ndarray:
    return rgb_to_y(img) if n_colors == 1 else img


def to_tensor(img: np.ndarray, rgb_range: int) -> torch.Tensor:
    """(H, W, C) uint8 -> float32 (C, H, W) holding ``x * rgb_range / 255``."""
    t = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32, order='C'))
    return t.mul_(rgb_range).div_(255)


def random_patch(lr: np.ndarray, hr: np.ndarray, patch_size: int, scale: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An LR patch of ``patch_size // scale`` at a random place and the HR patch it was made from."""
    lp = patch_size // scale
    lh, lw = lr.shape[:2]
    y = int(rng.integers(0, lh - lp + 1))
    x = int(rng.integers(0, lw - lp + 1))
    lr_patch = lr[y:y + lp, x:x + lp]
    hr_patch = hr[y * scale:(y + lp) * scale, x * scale:(x + lp) * scale]
    return np.ascontiguousarray(lr_patch), np.ascontiguousarray(hr_patch)


def augment(lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random horizontal flip, vertical flip and transpose (with the flips: the 8 rotations
    and reflections of the square) applied to both patches."""
    hflip, vflip, transpose = (bool(b) for b in rng.integers(0, 2, size=3))

    def apply(img: np.ndarray) -> np.ndarray:
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1]
        if transpose:
            img = img.transpose(1, 0, 2)
        return np.ascontiguousarray(img)

    return apply(lr), apply(hr)
