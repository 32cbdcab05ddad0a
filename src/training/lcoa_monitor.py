"""Per-epoch LCoA statistics for the trainer: log lines, ``lcoa_stats.csv`` and ``lcoa_stats.png``.

Each epoch records (see ``model.blocks.lcoa_stats``):

* ``empty_clusters``: k-means clusters that no training position joined during the epoch;
* ``perplexity``: perplexity of the epoch's cluster sizes (the number of equally full clusters that
  would give the same entropy);
* ``centroid_angle``: mean angle in degrees each centroid moved over the epoch (0 with ``--ema_decay 1``);
* ``self_weight``: mean weight each pixel's attention output takes from the pixel itself, on one
  fixed validation image: the first network call of each evaluation (the first image of the first
  test set; with ``--chop`` its first batch of tiles, with ``--self_ensemble`` its untransformed copy).

The first three come from counts the k-means forward keeps anyway; the last from the pattern the
evaluation's forward builds anyway. A network without LCoA modules (no ``KMeansCentroids``) records
nothing. The trainer calls :meth:`LCoAMonitor.start_epoch` / :meth:`end_epoch` around training,
evaluates inside :meth:`probe`, then calls :meth:`end_evaluation` and, when saving, :meth:`save`.
"""

import contextlib
import math

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from torch import nn

from model import compiling
from model.blocks import lcoa_stats
from model.blocks.lcoa import LearnableCollaborativeAttention

NAMES = ('empty_clusters', 'perplexity', 'centroid_angle', 'self_weight')
TITLES = {'empty_clusters': 'Empty k-means clusters', 'perplexity': 'Perplexity of the cluster sizes',
          'centroid_angle': 'Mean angle the centroids moved (degrees)',
          'self_weight': 'Mean attention weight on self (validation image)'}
CSV_NAME = 'lcoa_stats.csv'
PLOT_NAME = 'lcoa_stats.png'


class LCoAMonitor:
    """Collects :data:`NAMES` per epoch for the bare network ``net``; ``log`` is (epochs, 4) float64.

    Args:
        net: the bare network (``Model.get_model()``); disabled when it has no k-means module.
    """

    names = NAMES

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.enabled = bool(lcoa_stats.kmeans_modules(net))
        self.log = torch.zeros(0, len(NAMES), dtype=torch.float64)
        self._row = [math.nan] * len(NAMES)
        self._clusters = math.nan
        self._self_weight = math.nan

    # -- training

    def start_epoch(self) -> None:
        self._row = [math.nan] * len(NAMES)
        if self.enabled:
            lcoa_stats.reset_statistics(self.net)

    def end_epoch(self, epoch: int) -> str | None:
        """Cluster statistics of the epoch just trained; the log line, or None without statistics."""
        stats = lcoa_stats.epoch_statistics(self.net) if self.enabled else None
        if stats is None:
            return None
        self._row[:3] = [stats[name] for name in NAMES[:3]]
        self._clusters = stats['clusters']
        return (f'[Epoch {epoch}] LCoA: {stats["empty_clusters"]:.0f}/{stats["clusters"]:.0f} empty clusters, '
                f'cluster-size perplexity {stats["perplexity"]:.2f}, centroids moved {stats["centroid_angle"]:.3f} deg')

    # -- evaluation

    @contextlib.contextmanager
    def probe(self):
        """Within this context, the first forward of the network's first LCoA module records the mean self weight."""
        self._self_weight = math.nan
        module = next((m for m in self.net.modules() if isinstance(m, LearnableCollaborativeAttention)), None)
        if not self.enabled or module is None:
            yield
            return

        def hook(_module, _inputs, output):
            if math.isnan(self._self_weight):
                self._self_weight = float(lcoa_stats.self_weights(output[1]).mean())
            handle.remove()

        # Under --compile: a statistic read once, not part of the graph.
        handle = module.register_forward_hook(compiling.eager_hook(hook))
        try:
            yield
        finally:
            handle.remove()

    def end_evaluation(self, record: bool) -> str | None:
        """The self-weight log line of the evaluation just run; with ``record`` the epoch's row is appended."""
        if not self.enabled:
            return None
        self._row[3] = self._self_weight
        if record:
            self.log = torch.cat([self.log, torch.tensor([self._row], dtype=torch.float64)])
        if math.isnan(self._self_weight):
            return None
        return f'LCoA: mean attention weight on self {self._self_weight:.4f} (first validation image)'

    # -- files and resumption

    def save(self, ckp) -> None:
        """Write ``lcoa_stats.csv`` and ``lcoa_stats.png`` into the run folder (rank 0)."""
        if not self.enabled or self.log.shape[0] == 0:
            return
        ckp.write_csv(CSV_NAME, ['epoch', *NAMES], [[e + 1, *map(float, row)] for e, row in enumerate(self.log)])
        ckp.plot(PLOT_NAME, lambda fig: draw(fig, self.log))

    def state_dict(self) -> dict:
        return {'names': list(NAMES), 'log': self.log.clone()}

    def load_state_dict(self, state: dict | None, epochs: int) -> None:
        """Restore the log of a resumed run (NaN rows for epochs of a run that had no statistics)."""
        log = torch.full((epochs, len(NAMES)), math.nan, dtype=torch.float64)
        if state is not None and list(state['names']) == list(NAMES):
            rows = min(epochs, state['log'].shape[0])
            log[:rows] = state['log'][:rows]
        self.log = log


def draw(fig, log: torch.Tensor) -> None:
    """The four statistics per epoch, one panel each."""
    epochs = np.arange(1, log.shape[0] + 1)
    fig.set_size_inches(10, 7)
    for i, name in enumerate(NAMES):
        ax = fig.add_subplot(2, 2, i + 1)
        ax.plot(epochs, log[:, i].numpy(), marker='.')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(TITLES[name], fontsize=10)
        ax.set_xlabel('Epoch')
        ax.grid(True)
    fig.suptitle('LCoA statistics')
    fig.tight_layout()
