"""Result images: a tensor on the 8-bit grid as the PNG array, and the thread that writes PNGs in the
background while the evaluation goes on."""

import queue
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from metrics import quantize


def to_uint8(image: torch.Tensor, rgb_range: float) -> np.ndarray:
    """``image`` (C, H, W) in [0, rgb_range] as the (H, W, C) uint8 array of a PNG ((H, W) for one channel),
    on the same 8-bit grid the metrics score."""
    array = quantize(image, rgb_range).mul(255 / rgb_range).round()
    array = array.byte().permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if array.shape[2] == 1 else array


class ImageWriter:
    """A background thread writing queued ``(path, uint8 array)`` images; :meth:`close` re-raises its error."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name='image-writer', daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                iio.imwrite(*item)
            except BaseException as e:  # reported by close() in the main thread
                self._error = e

    def put(self, path: Path, array: np.ndarray) -> None:
        self._queue.put((path, array))

    def close(self) -> None:
        """Wait until every queued image is written; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
