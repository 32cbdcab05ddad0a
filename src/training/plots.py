"""The run folder's figures: PNGs drawn on a bare Agg figure, and the PSNR curve of a test set.

A bare :class:`~matplotlib.figure.Figure` on the Agg canvas needs no pyplot, so plotting sets no global
backend and keeps no figure registry; the PNG is written atomically like every other file of the run.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from core.io_utils import atomic_write


def plot_png(path: Path, draw: Callable) -> None:
    """Draw a figure with ``draw(fig)`` and write it to ``path`` as PNG."""
    fig = Figure()
    FigureCanvasAgg(fig)
    draw(fig)
    atomic_write(path, lambda f: fig.savefig(f, format='png'))


def psnr_curve(psnr: torch.Tensor, name: str, scale: int) -> Callable:
    """The ``draw(fig)`` of one test set's PSNR per epoch, as EDSR plots it.

    Args:
        psnr: (epochs,) the set's mean PSNR after each epoch.
        name: the test set, in the title.
        scale: the run's scale, in the legend.
    """
    epochs = np.arange(1, psnr.shape[0] + 1)

    def draw(fig) -> None:
        ax = fig.add_subplot()
        ax.plot(epochs, psnr.numpy(), marker='.', label=f'x{scale}')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f'SR on {name}')
        ax.set_xlabel('Epoch')
        ax.set_ylabel('PSNR (dB)')
        ax.grid(True)
        ax.legend()
    return draw
