"""What LCoA learns, in numbers: cluster statistics, centroid health and attention maps.

Everything here is read from tensors the forward pass computes anyway (the k-means codes, the
centroids' member counts, the sparse pattern); nothing runs the network again.

* Cluster statistics of codes (N, R, L): :func:`cluster_sizes`, :func:`perplexity` of the size
  distribution (``exp`` of its entropy: K when all K clusters are equally full, 1 when one cluster
  holds everything), :func:`mixed_window_share` (windows of the sorted sequence whose members come
  from more than one cluster).
* Centroid health over a training epoch (:func:`epoch_statistics`): empty clusters, perplexity and
  the mean angle the centroids moved, from ``KMeansCentroids.member_counts`` and ``start_means``.
* The attention a pattern encodes, for either implementation's pattern: :func:`attention_rows`
  (the dense weights one output pixel takes from every pixel, rounds combined), :func:`self_weights`
  (the weight every pixel takes from itself) and :func:`pattern_layout`, the one place that knows
  how each implementation stores its windows.

A pixel's row follows the pattern exactly: per round, the pixel's slot ``s`` in the (stably) sorted
sequence lies in window ``s // S``; its softmax weights run over that window's ``3 S`` keys (the
window and its two neighbours), a key pixel that occurs twice (padding, or fewer than three windows)
collects both weights; rounds are mixed with the pattern's round weights. Applying the rows to values
therefore gives exactly ``apply_pattern(pattern, values)`` (tested).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import sparse_attention, sparse_attention_reference
from model.blocks.lcoa import KMeansCentroids

# Largest number of (query, key) pairs compared at once by self_weights (bounds its scratch memory).
_SELF_WEIGHT_CHUNK = 1 << 24


@dataclass(frozen=True)
class PatternLayout:
    """A sparse pattern in one layout, whichever implementation built it.

    ``N`` batch, ``R`` rounds, ``L`` pixels, ``W`` windows of ``S`` slots, ``P = W * S`` padded slots.

    Attributes:
        query_pixels: (N, R, P) pixel at each slot of the padded sorted sequence (slots >= L are padding).
        key_pixels: (N, R, W, 3S) pixel of every key that window ``w`` attends to.
        weights: (N, R, W, S, 3S) softmax weights of every slot over its window's keys.
        round_weights: (N, R, L) weight of each round in each pixel's output (ones for one round).
    """

    query_pixels: Tensor
    key_pixels: Tensor
    weights: Tensor
    round_weights: Tensor

    @property
    def length(self) -> int:
        return self.round_weights.shape[-1]

    @property
    def window(self) -> int:
        return self.weights.shape[-2]


def pattern_layout(pattern) -> PatternLayout:
    """The :class:`PatternLayout` of a pattern built by ``sparse_attention`` or ``sparse_attention_reference``."""
    if isinstance(pattern, sparse_attention_reference.SparsePattern):
        return PatternLayout(pattern.order, pattern.key_index, pattern.weights.detach(),
                             pattern.round_weights.detach())
    if isinstance(pattern, sparse_attention.SparsePattern):
        plan = pattern.plan
        n, rounds, w, n_windows = plan.batch, plan.n_rounds, plan.window, plan.n_windows
        # Extended slots hold [last window | padded sorted sequence | first window]; window k's keys are
        # the 3w extended slots from k * w on, stored in the order [previous | self | next].
        ext = plan.gather_ext.view(n, rounds, plan.extended)
        key_slots = (torch.arange(n_windows, device=ext.device)[:, None] * w
                     + torch.arange(3 * w, device=ext.device)).flatten()
        key_pixels = ext[..., key_slots].view(n, rounds, n_windows, 3 * w)
        weights = pattern.weights.detach().view(n, rounds, n_windows, w, 3 * w)
        round_weights = (pattern.round_probs.detach() if pattern.round_probs is not None
                         else weights.new_ones(n, 1, plan.length))
        return PatternLayout(ext[..., w:w + plan.padded], key_pixels, weights, round_weights)
    raise TypeError(f'not a sparse-attention pattern: {type(pattern).__name__}')


def _slot_of_pixel(query_pixels: Tensor, length: int) -> Tensor:
    """(..., P) -> (..., L): the slot among the first L (a permutation of the pixels) that holds each pixel."""
    slots = torch.empty(*query_pixels.shape[:-1], length, dtype=torch.long, device=query_pixels.device)
    first = query_pixels[..., :length]
    return slots.scatter_(-1, first, torch.arange(length, device=first.device).expand_as(first))


def attention_rows(pattern, pixels: Tensor, batch: int = 0) -> Tensor:
    """The dense attention weights of output pixels ``pixels`` (M,) over all L pixels of batch item ``batch``.

    Returns (M, L) in float32 or wider; each row sums to 1 and ``rows @ values[batch]`` equals those
    pixels' rows of ``apply_pattern(pattern, values)``.
    """
    layout = pattern if isinstance(pattern, PatternLayout) else pattern_layout(pattern)
    length, window = layout.length, layout.window
    pixels = torch.as_tensor(pixels, dtype=torch.long, device=layout.weights.device).flatten()
    rows = layout.weights.new_zeros(pixels.shape[0], length)
    for r in range(layout.query_pixels.shape[1]):
        slots = _slot_of_pixel(layout.query_pixels[batch, r], length)[pixels]
        win, pos = slots // window, slots % window
        weights = layout.weights[batch, r, win, pos]  # (M, 3S)
        keys = layout.key_pixels[batch, r, win]  # (M, 3S)
        mix = layout.round_weights[batch, r, pixels].unsqueeze(-1)
        rows.scatter_add_(1, keys, weights * mix)
    return rows


def dense_attention(pattern, batch: int = 0) -> Tensor:
    """The whole (L, L) attention matrix of batch item ``batch`` (small images only: L * L floats)."""
    layout = pattern if isinstance(pattern, PatternLayout) else pattern_layout(pattern)
    return attention_rows(layout, torch.arange(layout.length), batch)


@torch.no_grad()
def self_weights(pattern) -> Tensor:
    """(N, L): the weight every pixel's output takes from the pixel's own value (rounds combined).

    Computed window block by window block, so the scratch memory stays bounded for large images.
    """
    layout = pattern if isinstance(pattern, PatternLayout) else pattern_layout(pattern)
    n, rounds, padded = layout.query_pixels.shape
    n_windows, window = layout.key_pixels.shape[2], layout.window
    length = layout.length
    block = max(1, _SELF_WEIGHT_CHUNK // (window * 3 * window))
    out = layout.weights.new_zeros(n, length)
    for b in range(n):
        for r in range(rounds):
            queries = layout.query_pixels[b, r].view(n_windows, window)
            per_slot = layout.weights.new_empty(padded)
            for k0 in range(0, n_windows, block):
                k1 = min(k0 + block, n_windows)
                same = queries[k0:k1, :, None] == layout.key_pixels[b, r, k0:k1, None, :]
                per_slot[k0 * window:k1 * window] = (layout.weights[b, r, k0:k1] * same).sum(-1).flatten()
            own = layout.weights.new_empty(length).scatter_(0, layout.query_pixels[b, r, :length], per_slot[:length])
            out[b] += own * layout.round_weights[b, r]
    return out


# ---------------------------------------------------------------------------------------------
# clusters


def cluster_sizes(codes: Tensor, n_clusters: int) -> Tensor:
    """Members of every cluster per round, over the whole batch: codes (N, R, L) -> (R, K) long."""
    flat = codes.transpose(0, 1).reshape(codes.shape[1], -1)
    return torch.zeros(codes.shape[1], n_clusters, dtype=torch.long, device=codes.device).scatter_add_(
        1, flat, torch.ones_like(flat))


def perplexity(counts: Tensor) -> Tensor:
    """``exp(entropy)`` of each row's size distribution: counts (..., K) -> (...); NaN for an all-zero row."""
    counts = counts.double()
    total = counts.sum(-1, keepdim=True)
    p = counts / total
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.full_like(entropy, math.nan))


def mixed_window_share(codes: Tensor, window_size: int) -> Tensor:
    """(N, R): share of the windows whose members come from more than one cluster.

    Windows are those of the pattern: positions stably sorted by cluster, padded like the pattern
    (padded slot ``j`` repeats sorted entry ``(L - pad + j) mod L``), cut into ``window_size`` slots.
    """
    n, rounds, length = codes.shape
    sorted_codes = torch.sort(codes, dim=-1, stable=True).values
    pad = (-length) % window_size
    slots = torch.arange(length + pad, device=codes.device)
    source = torch.where(slots < length, slots, torch.remainder(slots - pad, length))
    windows = sorted_codes[..., source].view(n, rounds, -1, window_size)
    mixed = windows.amax(-1) != windows.amin(-1)
    return mixed.double().mean(-1)


def centroid_angles(start: Tensor, now: Tensor) -> Tensor:
    """Angle in degrees between matching centroids: (R, K, D) x 2 -> (R, K)."""
    a = F.normalize(start.double(), dim=-1)
    b = F.normalize(now.double(), dim=-1)
    # 2 atan2(|a - b|, |a + b|): accurate for small angles (arccos of a dot product is not), exactly 0 for equal.
    return torch.rad2deg(2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1)))


# ---------------------------------------------------------------------------------------------
# centroid health over a training epoch

EPOCH_STATISTICS = ('empty_clusters', 'perplexity', 'centroid_angle')


def kmeans_modules(net: nn.Module) -> list[KMeansCentroids]:
    return [m for m in net.modules() if isinstance(m, KMeansCentroids)]


def reset_statistics(net: nn.Module) -> None:
    """Start an epoch: every k-means module counts members afresh and remembers its centroids."""
    for module in kmeans_modules(net):
        module.reset_statistics()


@torch.no_grad()
def epoch_statistics(net: nn.Module) -> dict[str, float] | None:
    """Centroid health since :func:`reset_statistics`, over the k-means modules that clustered any batch
    (in LCoAN only the first group's: the others reuse its pattern). None if none did.

    ``empty_clusters``: clusters (summed over rounds and modules) that no position joined;
    ``perplexity``: mean over rounds of the perplexity of the cluster sizes; ``centroid_angle``: mean
    angle in degrees between each centroid now and at the reset (or at its initialisation);
    ``clusters``: the number of clusters the empty ones are counted among.
    """
    used = [m for m in kmeans_modules(net) if m.member_counts.sum() > 0]
    if not used:
        return None
    counts = torch.cat([m.member_counts.double().cpu() for m in used])
    angles = torch.cat([centroid_angles(m.start_means, m.means).flatten().cpu() for m in used])
    return {'empty_clusters': float((counts == 0).sum()), 'perplexity': float(perplexity(counts).mean()),
            'centroid_angle': float(angles.mean()), 'clusters': float(counts.numel())}
