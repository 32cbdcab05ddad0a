"""``--tensorboard``: the run's numbers and a few images as TensorBoard events in ``<run>/tb/``.

Scalars, with the epoch as step: ``loss/<term>`` (each weighted loss term, and ``Total``),
``lr`` (the learning rate the epoch trained with), ``psnr/<set>_x<scale>`` and ``ssim/<set>_x<scale>``
at every evaluation, ``lcoa/<statistic>`` (``lcoa_monitor.NAMES``). Images: ``results/<set>/<image>``,
SR beside HR (a centre crop of at most ``IMAGE_CROP`` HR pixels), for the first ``IMAGES_PER_SET``
images of each test set at every evaluation.

Only the main process writes; without ``--tensorboard`` (or on other ranks) every method does nothing.
``torch.utils.tensorboard`` is imported only when the flag is given.
"""

import math
from pathlib import Path

import torch

IMAGES_PER_SET = 2
IMAGE_CROP = 256
LOG_DIR = 'tb'


class TensorBoardLog:
    """Writes events to ``<run folder>/tb/`` if ``enabled``.

    Args:
        run_dir: the run folder (``checkpoint.dir``).
        enabled: ``--tensorboard`` on the main process.
        rgb_range: pixel values lie in [0, rgb_range].
    """

    def __init__(self, run_dir, enabled: bool, rgb_range: float = 255) -> None:
        self.rgb_range = rgb_range
        self._images: dict[tuple[int, str], int] = {}
        self._log_dir = Path(run_dir) / LOG_DIR if enabled else None
        self._writer = None
        if enabled:  # a missing package is a start-up error; the folder is made with the first event
            from torch.utils.tensorboard import SummaryWriter  # optional dependency, only with --tensorboard
            self._make_writer = SummaryWriter

    @property
    def enabled(self) -> bool:
        return self._log_dir is not None

    @property
    def writer(self):
        """The SummaryWriter, made at the first event: the run folder is written only once the run starts."""
        if self._writer is None:
            self._writer = self._make_writer(log_dir=str(self._log_dir))
        return self._writer

    def add_losses(self, epoch: int, names, values, lr: float) -> None:
        """The epoch's mean weighted loss terms and its learning rate."""
        if not self.enabled:
            return
        for name, value in zip(names, values, strict=True):
            self.writer.add_scalar(f'loss/{name}', float(value), epoch)
        self.writer.add_scalar('lr', float(lr), epoch)

    def add_metrics(self, epoch: int, sets, scale: int, psnr: torch.Tensor, ssim: torch.Tensor) -> None:
        """PSNR and SSIM per set (1-D tensors over ``sets``; NaN entries, sets without HR, are left out)."""
        if not self.enabled:
            return
        for i, name in enumerate(sets):
            if not math.isnan(float(psnr[i])):
                self.writer.add_scalar(f'psnr/{name}_x{scale}', float(psnr[i]), epoch)
            if not math.isnan(float(ssim[i])):
                self.writer.add_scalar(f'ssim/{name}_x{scale}', float(ssim[i]), epoch)
        self.writer.flush()

    def add_statistics(self, epoch: int, names, values) -> None:
        """LCoA statistics of the epoch (NaN values are left out)."""
        if not self.enabled:
            return
        for name, value in zip(names, values, strict=True):
            if not math.isnan(float(value)):
                self.writer.add_scalar(f'lcoa/{name}', float(value), epoch)
        self.writer.flush()

    def add_result(self, epoch: int, set_name: str, filename: str, sr: torch.Tensor, hr: torch.Tensor) -> None:
        """SR beside HR ((1, C, H, W) in [0, rgb_range]) for the first IMAGES_PER_SET images of each set."""
        if not self.enabled or hr.numel() == 0:
            return
        key = (epoch, set_name)
        if self._images.get(key, 0) >= IMAGES_PER_SET:
            return
        self._images[key] = self._images.get(key, 0) + 1
        h, w = hr.shape[-2:]
        top, left = max(0, (h - IMAGE_CROP) // 2), max(0, (w - IMAGE_CROP) // 2)
        crop = (..., slice(top, top + IMAGE_CROP), slice(left, left + IMAGE_CROP))
        pair = torch.cat([sr[0][crop], hr[0][crop]], dim=-1).float().div(self.rgb_range).clamp(0, 1).cpu()
        self.writer.add_image(f'results/{set_name}/{filename}', pair, epoch, dataformats='CHW')

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
