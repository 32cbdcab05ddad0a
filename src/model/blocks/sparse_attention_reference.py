"""Learnable sparse attention, written plainly: the test oracle for the fast implementation.

Functional API (``model.blocks.attention_interface.SparseAttention``; ``model.blocks.sparse_attention`` implements
the same two functions):

* ``build_pattern(embed, codes, window_size)`` sorts the positions by cluster, cuts the sorted
  sequence into windows, and computes the softmax weights of every position over the keys of its
  own window and the two neighbouring windows (the Learnable Sparse Pattern).
* ``apply_pattern(pattern, values)`` applies those weights to new values: this is how the later
  residual groups share the first group's pattern (Collaborative Attention).

Semantics (those of the official LCoAN, with two deliberate generalisations):

* Per round ``r``, positions are sorted by cluster id with a stable sort (ties keep pixel order;
  the official sort is unstable, so its tie order is arbitrary).
* A sequence of length ``L`` is padded to a multiple of ``window_size`` by appending
  ``pad = (-L) % window_size`` more slots; padded slot ``j`` repeats sorted entry
  ``(L - pad + j) mod L``. For ``pad <= L`` this repeats the last ``pad`` entries, as the official
  code does; the cyclic form also covers images with fewer positions than ``pad`` (where the
  official code fails).
* Queries are the sorted embeddings; keys are the same embeddings L2-normalised
  (``eps = KEY_NORM_EPS``). Window ``w`` attends to the keys and values of windows ``w``, ``w - 1`` and
  ``w + 1`` (cyclically), so a key that lies in two of those windows (or in all three, when there
  are only one or two windows) is counted once per occurrence.
* ``lse`` is the logsumexp of a query's scores; the weights are ``exp(score - lse)``. Outputs of
  padded slots are dropped and the sort undone. Rounds are combined with weights
  ``softmax over rounds of lse``.

Scores, weights, ``lse`` and the round weights are computed in at least float32 (float64 stays
float64), with autocast disabled.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.blocks.attention_interface import KEY_NORM_EPS


@dataclass(frozen=True)
class SparsePattern:
    """The attention pattern of one batch: which values each position mixes, and with which weights.

    Shapes use ``N`` batch, ``R`` k-means rounds, ``L`` positions, ``W`` windows, ``S`` window size.
    """

    order: Tensor  # (N, R, W*S) position held by each slot of the padded sorted sequence
    undo: Tensor  # (N, R, L) slot of each position in the sorted sequence (inverse permutation)
    key_index: Tensor  # (N, R, W, 3*S) positions of the keys/values seen by each window
    weights: Tensor  # (N, R, W, S, 3*S) softmax weights of each slot over its window's keys
    lse: Tensor  # (N, R, L) logsumexp of each position's scores, in pixel order
    round_weights: Tensor  # (N, R, L) softmax over rounds of ``lse``


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _gather(t: Tensor, index: Tensor) -> Tensor:
    """``out[n, ...] = t[n, index[n, ...]]`` for ``t`` of shape (N, L, C) and any index shape (N, ...)."""
    batch = torch.arange(t.shape[0], device=t.device).view(-1, *([1] * (index.dim() - 1)))
    return t[batch, index]


def build_pattern(embed: Tensor, codes: Tensor, window_size: int) -> SparsePattern:
    """Learnable sparse pattern of ``embed`` given each position's cluster per round.

    Args:
        embed: (N, L, C) query/key embedding of every position.
        codes: (N, R, L) integer cluster id of every position in each of R rounds.
        window_size: positions per attention window.

    Returns:
        The pattern; gradients flow from its weights and ``lse`` back to ``embed``.
    """
    if embed.dim() != 3 or codes.dim() != 3 or codes.shape[0] != embed.shape[0] or codes.shape[2] != embed.shape[1]:
        raise ValueError('embed (N, L, C) and codes (N, R, L) do not match: '
                         f'{tuple(embed.shape)}, {tuple(codes.shape)}')
    if window_size <= 0:
        raise ValueError(f'window_size must be positive, got {window_size}')
    n, length, _ = embed.shape
    n_rounds = codes.shape[1]
    device = embed.device
    with torch.autocast(device_type=device.type, enabled=False):
        e = embed.to(_compute_dtype(embed.dtype))
        sorted_positions = torch.sort(codes, dim=-1, stable=True).indices  # (N, R, L)
        pad = (-length) % window_size
        slots = torch.arange(length + pad, device=device)
        source_slot = torch.where(slots < length, slots, (slots - pad) % length)
        order = sorted_positions[:, :, source_slot]  # (N, R, W*S)
        windows = order.view(n, n_rounds, -1, window_size)  # (N, R, W, S)
        key_index = torch.cat([windows, windows.roll(1, dims=2), windows.roll(-1, dims=2)], dim=-1)

        queries = _gather(e, windows)  # (N, R, W, S, C)
        keys = _gather(F.normalize(e, p=2, dim=-1, eps=KEY_NORM_EPS), key_index)  # (N, R, W, 3S, C)
        scores = torch.einsum('nrwic,nrwjc->nrwij', queries, keys)
        lse_slots = torch.logsumexp(scores, dim=-1, keepdim=True)
        weights = torch.exp(scores - lse_slots)

        undo = torch.empty_like(sorted_positions)
        undo.scatter_(-1, sorted_positions, torch.arange(length, device=device).expand_as(sorted_positions))
        lse = lse_slots.reshape(n, n_rounds, -1)[:, :, :length].gather(-1, undo)
        round_weights = torch.softmax(lse, dim=1)
    return SparsePattern(order=order, undo=undo, key_index=key_index, weights=weights, lse=lse,
                         round_weights=round_weights)


def apply_pattern(pattern: SparsePattern, values: Tensor) -> Tensor:
    """Attend with ``pattern`` over ``values``; rounds are combined, no scaling and no residual.

    Args:
        pattern: from :func:`build_pattern` on a batch with the same N and L.
        values: (N, L, Cv) values of every position.

    Returns:
        (N, L, Cv) in the dtype of ``values``.
    """
    n, length = pattern.undo.shape[0], pattern.undo.shape[2]
    if values.dim() != 3 or values.shape[:2] != (n, length):
        raise ValueError(f'values must have shape ({n}, {length}, C) to match the pattern, got {tuple(values.shape)}')
    with torch.autocast(device_type=values.device.type, enabled=False):
        v = values.to(torch.promote_types(_compute_dtype(values.dtype), pattern.weights.dtype))
        window_values = _gather(v, pattern.key_index)  # (N, R, W, 3S, Cv)
        out = torch.einsum('nrwij,nrwjc->nrwic', pattern.weights.to(v.dtype), window_values)
        out = out.reshape(n, pattern.undo.shape[1], -1, v.shape[-1])[:, :, :length]
        out = out.gather(2, pattern.undo.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]))  # back to pixel order
        out = (out * pattern.round_weights.unsqueeze(-1).to(v.dtype)).sum(dim=1)
    return out.to(values.dtype)
