"""The training loss: a weighted sum of pixel terms given by ``--loss`` (``1*L1+0.5*MSE``).

Each term's weighted value is logged separately per epoch (plus ``Total`` when there are several),
printed by :meth:`Loss.display_loss` and plotted by :meth:`Loss.plot_loss`.
"""

import argparse
import math
import re

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from torch import nn

from core import distributed
from core.errors import UserError
from loss.terms import TERMS, make_term

_TERM = re.compile(r'\s*([^*]+?)\s*\*\s*([A-Za-z0-9_]+)\s*')


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """``'1*L1+0.5*MSE'`` -> ``[(1.0, 'L1'), (0.5, 'MSE')]``; UserError naming the bad part."""
    lookup = {t.lower(): t for t in TERMS}
    out = []
    for part in spec.split('+'):
        m = _TERM.fullmatch(part)
        if not m:
            raise UserError(f'--loss {spec!r}: cannot read {part!r}; expected weight*term, e.g. 1*L1+0.5*MSE')
        try:
            weight = float(m.group(1))
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight <= 0:
            raise UserError(f'--loss {spec!r}: weight {m.group(1)!r} of {m.group(2)} must be a positive number')
        name = lookup.get(m.group(2).lower())
        if name is None:
            raise UserError(f'--loss {spec!r}: unknown loss term {m.group(2)!r}; allowed: {", ".join(TERMS)}')
        if name in (n for _, n in out):
            raise UserError(f'--loss {spec!r}: term {name} is given twice')
        out.append((weight, name))
    return out


class Loss(nn.Module):
    """Weighted sum of the ``--loss`` terms, with a per-epoch log of each weighted term.

    Usage per epoch: ``start_log()``; per batch ``total = loss(sr, hr)`` and, if the batch is
    kept, ``accept()``; then ``end_log()``. ``log`` is a float64 tensor (epochs, len(names)).

    Positional arguments, as main.py and EDSR pass them.

    Args:
        args: parsed options; uses ``loss`` (the spec) and ``rgb_range`` (Charbonnier's eps).
        ckp: ``run_folder.RunFolder`` for the one-line description of the loss, or None.
    """

    def __init__(self, args: argparse.Namespace, ckp) -> None:
        super().__init__()
        self.spec = parse_loss_spec(args.loss)
        self.weights = [w for w, _ in self.spec]
        self.terms = nn.ModuleList(make_term(n, rgb_range=args.rgb_range) for _, n in self.spec)
        self.names = [n for _, n in self.spec] + (['Total'] if len(self.spec) > 1 else [])
        self.log = torch.zeros(0, len(self.names), dtype=torch.float64)
        self._sum = torch.zeros(len(self.names), dtype=torch.float64)
        self._count = 0
        self._last: torch.Tensor | None = None
        if ckp is not None:
            ckp.write_log('Loss: ' + ' + '.join(f'{w:g} * {n}' for w, n in self.spec))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Total loss (float32 even under autocast); the weighted terms wait for :meth:`accept`."""
        sr, hr = sr.float(), hr.float()
        values = [w * term(sr, hr) for w, term in zip(self.weights, self.terms, strict=True)]
        total = values[0] if len(values) == 1 else torch.stack(values).sum()
        self._last = torch.stack(values + ([total] if len(values) > 1 else [])).detach()
        return total

    def start_log(self) -> None:
        self._sum.zero_()
        self._count = 0

    def accept(self) -> None:
        """Count the last batch's terms in this epoch's means (skipped batches are not counted)."""
        self._sum += self._last.to('cpu', torch.float64)
        self._count += 1

    def all_reduce(self, device: torch.device) -> None:
        """Under torch.distributed: sum this epoch's accumulators over all processes (call before end_log)."""
        if not distributed.is_initialized():
            return
        t = torch.cat([self._sum, torch.tensor([float(self._count)], dtype=torch.float64)]).to(device)
        torch.distributed.all_reduce(t)
        t = t.cpu()
        self._sum, self._count = t[:-1].clone(), int(t[-1])

    def end_log(self) -> None:
        """Append this epoch's means (NaN if every batch was skipped) to ``log``."""
        row = self._sum / self._count if self._count else torch.full_like(self._sum, math.nan)
        self.log = torch.cat([self.log, row[None]])

    def display_loss(self) -> str:
        """``[L1: 0.0123][MSE: 0.0004][Total: 0.0127]``: the running means of this epoch
        (``[no batch accepted]`` while every batch of the epoch was skipped: there is no mean)."""
        if self._count == 0:
            return '[no batch accepted]'
        n = self._count
        return ''.join(f'[{name}: {v / n:.4f}]' for name, v in zip(self.names, self._sum.tolist(), strict=True))

    def plot_loss(self, ckp) -> None:
        """One PNG per term, ``loss_<term>.png`` in the run folder: loss per epoch."""
        epochs = np.arange(1, self.log.shape[0] + 1)
        for i, name in enumerate(self.names):
            def draw(fig, i=i, name=name):
                ax = fig.add_subplot()
                ax.plot(epochs, self.log[:, i].numpy(), marker='.', label=f'{name} loss')
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(f'{name} loss')
                ax.set_xlabel('Epoch')
                ax.set_ylabel('Loss')
                ax.grid(True)
                ax.legend()
            ckp.plot(f'loss_{name}.png', draw)
