"""``--data_test Demo``: every image in ``--dir_demo`` is super-resolved and saved; no HR, no metrics."""

from pathlib import Path

from data.common import IMAGE_EXTS, DataError, describe_conversion, list_images
from data.srdata import DemoImages, warn
from data.storage import ImageStore


def demo_set(dir_demo: Path, *, store: ImageStore, n_colors: int, rgb_range: int) -> DemoImages:
    """The Demo dataset over ``dir_demo``; DataError naming the folder if it is missing or empty, or
    naming the file that cannot be read."""
    if not dir_demo.is_dir():
        raise DataError(f'--dir_demo {dir_demo}: not a folder (it should hold the images to super-resolve)')
    paths = list_images(dir_demo)
    if not paths:
        raise DataError(f'--dir_demo {dir_demo}: holds no images ({", ".join(IMAGE_EXTS)})')
    message = describe_conversion('Demo', ((p.name, store.inspect(p, dir_demo)[0].conversion) for p in paths))
    if message:
        warn(message)
    return DemoImages(paths=paths, store=store, n_colors=n_colors, rgb_range=rgb_range)
