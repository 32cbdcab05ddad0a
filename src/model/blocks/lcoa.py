"""Learnable Collaborative Attention: k-means centroids, the learnable sparse pattern, and its sharing.

The first residual group clusters its features with learnable k-means centroids, builds the
Learnable Sparse Pattern (LSP) from the clusters, and hands the pattern to the later groups, which
apply it to their own values (Collaborative Attention, CoA).

Each attention module chooses its sparse-attention implementation when it is built (``attention_impl``,
the ``--attention_impl`` flag): ``'fast'`` (``model.blocks.sparse_attention``, the default) or ``'reference'``
(``model.blocks.sparse_attention_reference``, plain and obviously faithful; the tests' oracle). Both follow
``model.blocks.attention_interface``, so models using either can live side by side in one process.
"""

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from core import distributed
from model.blocks import common, sparse_attention, sparse_attention_reference
from model.blocks.attention_interface import Pattern, SparseAttention
from model.compiling import outside_compiled_graph

IMPLEMENTATIONS: dict[str, SparseAttention] = {'fast': sparse_attention, 'reference': sparse_attention_reference}
KMEANS_INIT_ITERS = 10


def attention_module(attention_impl: str) -> SparseAttention:
    """The module implementing ``build_pattern``/``apply_pattern`` for ``attention_impl`` ('fast' or 'reference')."""
    if attention_impl not in IMPLEMENTATIONS:
        raise ValueError(f'unknown attention implementation {attention_impl!r}; '
                         f'expected one of {", ".join(IMPLEMENTATIONS)}')
    return IMPLEMENTATIONS[attention_impl]


# Distributed helpers: with torch.distributed initialised, every rank must hold the same centroids, so the
# statistics that move them are shared. Without it they are no-ops.

def _all_reduce_sum(*tensors: Tensor) -> None:
    if distributed.is_initialized():
        _all_reduce_sum_eagerly(*tensors)


@outside_compiled_graph
def _all_reduce_sum_eagerly(*tensors: Tensor) -> None:
    # Outside any compiled graph (--compile): traced, an in-place all_reduce becomes an asynchronous
    # functional collective.
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _gather_rows(rows: Tensor, across_ranks: bool) -> Tensor:
    """Concatenation, in rank order, of every rank's ``rows`` (M_rank, D); M_rank may differ between ranks."""
    if not (across_ranks and distributed.is_initialized()):
        return rows
    world = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts_list = [int(c.item()) for c in counts]
    padded = rows.new_zeros(max(counts_list), rows.shape[1])
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts_list, strict=True)])


def _shared_sample_indices(n_samples: int, n_rounds: int, n_clusters: int, device: torch.device,
                           across_ranks: bool) -> Tensor:
    """Indices (R, K) of the initial centroids of every round among ``n_samples`` rows; drawn by rank 0
    and broadcast to all ranks.

    Rounds start from different rows: with at least ``R * K`` rows every centroid of every round gets
    its own row (one permutation, cut into rounds); with fewer, each round draws its own ``K`` rows.
    For one round this is the official draw, ``randperm(n_samples)[:K]`` (``randint`` below ``K`` rows).
    """
    across_ranks = across_ranks and distributed.is_initialized()
    if not across_ranks or dist.get_rank() == 0:
        if n_samples >= n_rounds * n_clusters:
            indices = torch.randperm(n_samples, device=device)[:n_rounds * n_clusters].view(n_rounds, n_clusters)
        elif n_samples >= n_clusters:
            indices = torch.stack([torch.randperm(n_samples, device=device)[:n_clusters] for _ in range(n_rounds)])
        else:
            indices = torch.randint(0, n_samples, (n_rounds, n_clusters), device=device)
    else:
        indices = torch.empty(n_rounds, n_clusters, dtype=torch.long, device=device)
    if across_ranks:
        dist.broadcast(indices, src=0)
    return indices


def _assign(x: Tensor, means: Tensor) -> Tensor:
    """Cluster of each row: ``argmax_k x . means_k`` per round. x (N, L, D), means (R, K, D) -> (N, R, L)."""
    return torch.einsum('nld,rkd->nrlk', x, means).argmax(dim=-1)


def _cluster_counts(codes: Tensor, n_clusters: int, dtype: torch.dtype) -> Tensor:
    """Members per round and cluster, summed over batch and positions: codes (N, R, L) -> (R, K)."""
    flat_codes = rearrange(codes, 'n r l -> r (n l)')
    return torch.zeros(codes.shape[1], n_clusters, dtype=dtype, device=codes.device).scatter_add_(
        1, flat_codes, torch.ones_like(flat_codes, dtype=dtype))


def _cluster_sums(x: Tensor, codes: Tensor, n_clusters: int) -> tuple[Tensor, Tensor]:
    """Per round and cluster, the sum of the member rows and their count. x (N, L, D), codes (N, R, L)
    -> sums (R, K, D), counts (R, K), summed over batch and positions."""
    d = x.shape[-1]
    n_rounds = codes.shape[1]
    flat_codes = rearrange(codes, 'n r l -> r (n l)')
    flat_x = rearrange(x, 'n l d -> (n l) d').expand(n_rounds, -1, -1)
    sums = x.new_zeros(n_rounds, n_clusters, d).scatter_add_(1, flat_codes.unsqueeze(-1).expand(-1, -1, d), flat_x)
    return sums, _cluster_counts(codes, n_clusters, x.dtype)


def _renormalised_means(old: Tensor, sums: Tensor, counts: Tensor) -> Tensor:
    """Direction of each cluster's sum; a cluster without members keeps its old centroid."""
    return torch.where(counts.unsqueeze(-1) > 0, F.normalize(sums, dim=-1), old)


class KMeansCentroids(nn.Module):
    """k-means centroids, one set per round, that map embeddings to cluster ids (learned by moving
    averages, not by gradients).

    The centroids are initialised from the first batch they see (random rows followed by
    ``KMEANS_INIT_ITERS`` k-means iterations on the raw embeddings, as the official code does; each
    round from its own rows) and, in training mode, move towards the normalised mean of their members
    by an exponential moving average after every batch. All statistics are float32 (or float64 for
    float64 input) with autocast disabled.

    ``ema_decay=1`` freezes the centroids at their initialisation. That is how the published models
    were trained: the official ``Kmeans.forward(x, update_means=True)`` (``kmeans_attention.py``)
    accumulates the moving average in ``self.new_means``, but the ``update`` method that would copy it
    into ``self.means`` (through ``ema_inplace``) is commented out, as is the backward hook
    (``update_kmeans_on_backwards``) that would call it, so ``means`` never changes after ``init``.
    Use ``--ema_decay 1`` to reproduce the paper's training exactly; below 1 (the default) the
    centroids follow their clusters.

    In training mode the module also counts the members of every cluster (``member_counts``, over all
    ranks) and keeps the centroids of the last :meth:`reset_statistics` (``start_means``), so that
    ``model.blocks.lcoa_stats`` can report empty clusters, cluster-size perplexity and how far the centroids
    moved without any extra pass. Both are non-persistent buffers: not in the state_dict.

    Args:
        n_rounds: k-means rounds (clusterings; the ``--n_hashes`` flag). Each round is initialised from
            different rows, so the rounds are different clusterings. (The official code starts every
            round from the same rows, so its rounds coincide; official checkpoints hold initialised
            centroids and load unchanged.)
        dim: embedding channels.
        n_clusters: clusters per round.
        ema_decay: weight of the old centroid in the moving average, in [0, 1]; 1 freezes the centroids.
    """

    def __init__(self, *, n_rounds: int, dim: int, n_clusters: int, ema_decay: float) -> None:
        super().__init__()
        if not 0 <= ema_decay <= 1:
            raise ValueError(f'ema_decay must be in [0, 1], got {ema_decay}')
        self.n_rounds = n_rounds
        self.n_clusters = n_clusters
        self.ema_decay = ema_decay
        # Random values that the first batch overwrites; drawn anyway to keep the official
        # construction's random-number consumption (same seed, same initial weights).
        self.register_buffer('means', torch.randn(n_rounds, n_clusters, dim))
        # In the state_dict (official checkpoints hold it). Read through _initialised(), which keeps a
        # Python copy of it so that a forward pass does not wait for the device to read it.
        self.register_buffer('initted', torch.tensor(False))
        self._initted_seen: tuple[Tensor | None, int, bool] = (None, -1, False)
        self.register_load_state_dict_post_hook(_reread_initted)
        # Buffers (not plain attributes) so that they follow the module's device and a trainer that restores
        # the buffers after a skipped batch restores these too.
        self.register_buffer('member_counts', torch.zeros(n_rounds, n_clusters), persistent=False)
        self.register_buffer('start_means', torch.zeros(n_rounds, n_clusters, dim), persistent=False)

    def extra_repr(self) -> str:
        return f'n_rounds={self.n_rounds}, n_clusters={self.n_clusters}, ema_decay={self.ema_decay}'

    @property
    def frozen(self) -> bool:
        """True if training leaves the centroids where they were initialised (``ema_decay == 1``)."""
        return self.ema_decay == 1

    @torch.no_grad()
    def reset_statistics(self) -> None:
        """Start counting members afresh, and measure centroid movement from the centroids as they are now."""
        self.member_counts.zero_()
        self.start_means.copy_(self.means)

    # Run once, eagerly also under --compile: its collectives (gathers of a data-dependent size, a
    # broadcast) would be traced into asynchronous functional collectives.
    @outside_compiled_graph
    @torch.no_grad()
    def initialise(self, embed: Tensor, *, across_ranks: bool = True) -> None:
        """Initialise the centroids from ``embed`` (N, L, D), gathered over all ranks when distributed.

        ``across_ranks=False`` keeps it local: evaluation runs on rank 0 alone, so no collective.
        """
        x = embed.detach().to(torch.promote_types(embed.dtype, torch.float32))
        samples = _gather_rows(rearrange(x, 'n l d -> (n l) d'), across_ranks)
        indices = _shared_sample_indices(samples.shape[0], self.n_rounds, self.n_clusters, samples.device,
                                         across_ranks)
        # Each round starts from its own rows (the official code starts every round from the same rows,
        # so its rounds stay identical and only repeat the work).
        means = samples[indices]
        # k-means on the gathered samples: every rank computes the same result without further traffic.
        samples = samples.unsqueeze(0)
        for _ in range(KMEANS_INIT_ITERS):
            sums, counts = _cluster_sums(samples, _assign(samples, means), self.n_clusters)
            means = _renormalised_means(means, sums, counts)
        self.means.copy_(means)
        self.start_means.copy_(means)
        self.initted.fill_(True)
        self._initted_seen = (self.initted, self.initted._version, True)

    def _initialised(self) -> bool:
        """The ``initted`` flag, read from the device only when the buffer has been replaced or written since
        the last read (its version counter: ``fill_``, ``copy_``, ``load_state_dict``, a trainer restoring
        buffers), so the steady state of training and evaluation has no host-device synchronisation.

        Under ``torch.compile`` a True flag that was read before is trusted as it is (the version counter
        would be a data-dependent graph break); ``load_state_dict`` re-reads it.
        """
        flag = self.initted
        if isinstance(flag, bool):  # export.prepare makes it a plain bool
            return flag
        seen, version, value = getattr(self, '_initted_seen', (None, -1, False))
        if torch.compiler.is_compiling():
            return value or _read_flag(flag)
        if seen is not flag or version != flag._version:
            value = bool(flag)
            self._initted_seen = (flag, flag._version, value)
        return value

    @torch.no_grad()
    def forward(self, embed: Tensor) -> Tensor:
        """Cluster id of every position in every round: embed (N, L, D) -> LongTensor (N, R, L).

        Initialises the centroids if needed; in training mode then moves them (moving average) unless
        they are frozen, and counts the members of every cluster.
        """
        with torch.autocast(device_type=embed.device.type, enabled=False):
            if not self._initialised():
                if not self.training:
                    warnings.warn('k-means centroids are not initialised (no trained checkpoint loaded?): '
                                  'initialising them from this evaluation batch', stacklevel=2)
                self.initialise(embed, across_ranks=self.training)
            x = F.normalize(embed.detach().to(torch.promote_types(embed.dtype, torch.float32)), dim=-1)
            means = self.means.to(x.dtype)
            codes = _assign(x, means)
            if self.training:
                if self.frozen:
                    counts = _cluster_counts(codes, self.n_clusters, x.dtype)
                    _all_reduce_sum(counts)
                else:
                    sums, counts = _cluster_sums(x, codes, self.n_clusters)
                    _all_reduce_sum(sums, counts)
                    new = _renormalised_means(means, sums, counts)
                    self.means.copy_(F.normalize(self.ema_decay * means + (1 - self.ema_decay) * new, dim=-1))
                self.member_counts.add_(counts)
        return codes


@outside_compiled_graph
def _read_flag(flag: Tensor) -> bool:
    """``bool(flag)`` outside the compiled graph: a graph break that dynamo takes without a warning."""
    return bool(flag)


def _reread_initted(module: KMeansCentroids, _incompatible_keys) -> None:
    """After ``load_state_dict``: read the loaded ``initted`` flag once (see ``KMeansCentroids._initialised``)."""
    module._initted_seen = (None, -1, False)
    module._initialised()


class LearnableCollaborativeAttention(nn.Module):
    """Sparse non-local attention over k-means clusters whose pattern is shared across residual groups.

    ``forward(x, pattern=None)``: without a pattern (first group) the module embeds ``x`` with
    ``conv_match``, clusters the embedding with ``kmeans`` and builds the pattern; with one (later
    groups) it only computes its values with ``conv_assembly``. Returns
    ``(x + res_scale * attention, pattern)``. Channels-last features (as LCoAN keeps them) make the
    (N, H*W, C) views of embeddings and values free and let the fast attention gather whole rows.

    Args:
        n_feats: channels of the input features (and of the values).
        reduction: the query/key embedding has ``n_feats // reduction`` channels.
        n_clusters: k-means clusters per round.
        window_size: positions per attention window.
        n_rounds: k-means rounds (independent clusterings whose outputs are combined; ``--n_hashes``).
        ema_decay: moving-average decay of the centroids, in [0, 1] (1: frozen at their initialisation).
        res_scale: scale of the attention output before the residual sum.
        attention_impl: sparse-attention implementation of this module, 'fast' or 'reference'.
    """

    def __init__(self, *, n_feats: int, reduction: int, n_clusters: int, window_size: int, n_rounds: int,
                 ema_decay: float, res_scale: float, attention_impl: str = 'fast') -> None:
        super().__init__()
        if n_feats % reduction:
            raise ValueError(f'reduction ({reduction}) must divide n_feats ({n_feats})')
        self.window_size = window_size
        self.res_scale = res_scale
        attention_module(attention_impl)  # fail at construction, not at the first forward
        # The name, not the module: looked up at every call, so the network stays picklable and deep-copyable.
        self.attention_impl = attention_impl
        self.kmeans = KMeansCentroids(n_rounds=n_rounds, dim=n_feats // reduction, n_clusters=n_clusters,
                                      ema_decay=ema_decay)
        self.conv_match = common.BasicBlock(in_channels=n_feats, out_channels=n_feats // reduction, kernel_size=3)
        self.conv_assembly = common.BasicBlock(in_channels=n_feats, out_channels=n_feats, kernel_size=1)

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}, res_scale={self.res_scale}, attention_impl={self.attention_impl!r}'

    def build_pattern(self, x: Tensor) -> Pattern:
        """The learnable sparse pattern of features ``x`` (N, C, H, W)."""
        embed = rearrange(self.conv_match(x), 'n c h w -> n (h w) c')
        return IMPLEMENTATIONS[self.attention_impl].build_pattern(embed, self.kmeans(embed), self.window_size)

    def forward(self, x: Tensor, pattern: Pattern | None = None) -> tuple[Tensor, Pattern]:
        if pattern is None:
            pattern = self.build_pattern(x)
        values = rearrange(self.conv_assembly(x), 'n c h w -> n (h w) c')
        out = IMPLEMENTATIONS[self.attention_impl].apply_pattern(pattern, values)
        out = rearrange(out, 'n (h w) c -> n c h w', h=x.shape[2])
        return torch.add(x, out, alpha=self.res_scale), pattern
