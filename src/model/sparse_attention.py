"""Fast LCoA sparse attention: a learnable sparse pattern built once and applied to many value tensors.

This is the hot path of LCoAN's non-local part. ``build_pattern`` runs once per forward pass (first
residual group); ``apply_pattern`` runs in every residual group with that group's values
(collaborative attention, CoA). ``sparse_attention_reference`` computes the same function the plain
way and is the oracle of the tests.

Per k-means round, positions are stably sorted by cluster id, the sorted sequence is padded to a
whole number of windows (padded entry ``j`` repeats sorted entry ``(L - pad + j) mod L``) and every
window attends to the keys and values of itself, the previous and the next window (cyclic).
Queries are the sorted embeddings, keys their L2-normalised copies. Rounds are combined by a
softmax over rounds of each position's log-sum-exp. The weights' key blocks are stored in the
order [previous | self | next] (the reference and the official code use [self | previous | next]:
the softmax runs over all three blocks, so the order is only a layout).

Why it is faster and leaner than the straightforward version:

* sort, padding and undo-sort indices are computed once per pattern;
* neighbour windows are views, never copies: the sorted keys and values are gathered once into an
  *extended* sequence with one wrapped window on either side ([last | 0 .. nW-1 | first]), in
  which the keys of window ``k`` and its neighbours are the ``3 * w`` consecutive rows starting at
  window ``k``. An overlapping strided view of those rows turns every window's scores and every
  application into one batched matrix product with a ``3 * w`` inner dimension;
* every product is one batched BLAS call with a contiguous result, not a loop of small calls:
  with few (and possibly shared) cores each call is one parallel region, not dozens;
* embeddings and values come as (N, L, C) rows, which the network's channels-last features give
  without a copy (``rearrange(x, 'n c h w -> n (h w) c')`` is a view), and every gather then reads
  whole rows; other layouts give the same result through slower strided gathers;
* scratch buffers live in the pattern and are reused by every application (fresh large
  allocations page-fault on every call on some machines);
* two ``autograd.Function``s own the backward passes. Building saves only the embeddings and the
  attention weights (the softmax backward needs nothing else; no raw scores are kept), applying
  saves only the values tensor itself (no gathered or tripled copies); gathers are recomputed;
* the backward passes reuse the forward's sort: the gradient w.r.t. every window's [previous | self
  | next] rows is one batched product, folded onto the sorted rows (the wrapped windows and the
  padding added to the rows they repeat) and put back in pixel order by a gather with the inverse
  permutation: no scatter-add, whose colliding indices serialise it.

Under autocast the matrix products run in the autocast dtype; softmax, log-sum-exp and the stored
attention weights stay in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from model.attention_interface import KEY_NORM_EPS

# The batched products below write into contiguous (row-major) results and read operands whose
# matrices are row- or column-major with any leading dimension (overlapping batches included):
# that lets every call go to one batched BLAS call (one parallel region) instead of a loop of small
# ones, which matters on few, shared cores.

def _take(src: Tensor, index: Tensor, out: Tensor) -> None:
    """``out = src[index]``: rows of a 2-D (positions, channels) ``src`` into a contiguous ``out``."""
    if src.dtype == out.dtype:
        torch.index_select(src, 0, index, out=out)
    else:
        out.copy_(src.index_select(0, index))


def _compute_dtype(x: Tensor, weights_dtype: torch.dtype) -> torch.dtype:
    """The matmul dtype: the autocast one if autocast is on, else the promoted input dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weights_dtype)


def _softmax_(x: Tensor) -> None:
    """Softmax over the last dim, in place where the kernel allows it (row-wise CPU kernel)."""
    if x.device.type == 'cpu':
        torch.ops.aten._softmax.out(x, -1, False, out=x)
    else:
        x.copy_(torch.softmax(x, dim=-1))


def _cluster_order(codes: Tensor) -> Tensor:
    """Positions sorted by cluster id, per round: codes (N, R, L) -> indices (N, R, L).

    Stable, so positions of one cluster keep their pixel order on every device and torch version.
    (The official code's sort is not stable; only which tied positions fall on either side of a
    window border differs, see ``tests/test_official_fixtures.py``.)
    """
    return torch.sort(codes, dim=-1, stable=True).indices


class _Plan:
    """Sort/pad/undo-sort indices of one pattern, plus scratch buffers reused by all its applications.

    Slots ``b = n * n_rounds + r`` enumerate (batch item, round) pairs; ``P`` is the padded length.
    """

    def __init__(self, codes: Tensor, window_size: int):
        n, n_rounds, length = codes.shape
        self.batch, self.n_rounds, self.length, self.window = n, n_rounds, length, window_size
        self.n_windows = -(-length // window_size)
        self.padded = self.n_windows * window_size
        pad = self.padded - length
        device = codes.device
        order = _cluster_order(codes)
        positions = torch.arange(length, device=device)
        # Padding repeats the last `pad` sorted entries; cyclic when pad > L (images smaller than a window).
        padded_source = torch.cat([positions, torch.remainder(torch.arange(pad, device=device) + length - pad, length)])
        # The extended sequence wraps one window around either end: [last | 0 .. nW-1 | first].
        slots = torch.arange(self.padded, device=device)
        ring = torch.cat([slots[-window_size:], slots, slots[:window_size]])
        # gather_ext[b, j]: pixel at extended sorted slot j (its middle P entries are the padded sorted
        # sequence); order[b, j]: pixel at sorted slot j < L; rank[b, l]: sorted slot of pixel l.
        self.gather_ext = order[..., padded_source[ring]].reshape(n * n_rounds, self.extended)
        self.order = order.reshape(n * n_rounds, length)
        self.rank = torch.empty_like(self.order).scatter_(1, self.order, positions.expand_as(self.order))
        self.pad_source = padded_source[length:]
        self._scratch: dict[tuple, Tensor] = {}
        self._weights_cast: dict[torch.dtype, Tensor] = {}

    @property
    def slots(self) -> int:
        return self.batch * self.n_rounds

    @property
    def extended(self) -> int:
        """Rows of an extended sequence: the padded length plus one window on either side."""
        return self.padded + 2 * self.window

    def scratch(self, name: str, rows: int, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A reusable contiguous (rows, channels) buffer; never handed out of this module."""
        key = (name, rows, channels, dtype, device)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = torch.empty((rows, channels), dtype=dtype, device=device)
        return buf

    def weights_as(self, weights: Tensor, dtype: torch.dtype) -> Tensor:
        """The attention weights in the matmul dtype (cast once per pattern, not per application)."""
        if weights.dtype == dtype:
            return weights
        cast = self._weights_cast.get(dtype)
        if cast is None:
            cast = self._weights_cast[dtype] = weights.detach().to(dtype)
        return cast

    def windows(self, x: Tensor) -> Tensor:
        """(nW * w, c) -> (nW, w, c) view."""
        return x.unflatten(0, (self.n_windows, self.window))

    def middle(self, x_ext: Tensor) -> Tensor:
        """Extended rows ((nW + 2) * w, c) -> the padded sorted sequence (P, c) they contain (a view)."""
        return x_ext[self.window:self.window + self.padded]

    def triples(self, x_ext: Tensor) -> Tensor:
        """Extended rows ((nW + 2) * w, c), any 2-D strides -> (nW, 3w, c): the rows of window k's
        [previous | self | next] windows, as an overlapping view (no copy)."""
        row, col = x_ext.stride()
        return x_ext.as_strided((self.n_windows, 3 * self.window, x_ext.shape[1]), (self.window * row, row, col))

    def fold_triples(self, grad_triples: Tensor, out: Tensor) -> Tensor:
        """Gradient w.r.t. every window's [previous | self | next] rows (nW, 3w, c) -> w.r.t. the padded
        sorted rows, written to ``out`` (P, c) and returned.

        Window k's rows are the 'self' block of window k, the 'previous' block of window k + 1 and the
        'next' block of window k - 1 (cyclically): the adjoint of :meth:`triples`.
        """
        w = self.window
        previous, own, following = grad_triples[:, :w], grad_triples[:, w:2 * w], grad_triples[:, 2 * w:]
        out_windows = self.windows(out)
        torch.add(own[:-1], previous[1:], out=out_windows[:-1])
        torch.add(own[-1], previous[0], out=out_windows[-1])
        out_windows[1:] += following[:-1]
        out_windows[0] += following[-1]
        return out

    def fold_padding(self, grad_padded: Tensor) -> Tensor:
        """Gradient w.r.t. the padded sorted rows (P, c) -> w.r.t. the sorted rows (L, c), in place; a view."""
        length = self.length
        pad = self.padded - length
        rows = grad_padded[:length]
        if pad > length:  # cyclic padding: a row may be repeated more than once
            rows.index_add_(0, self.pad_source, grad_padded[length:])
        elif pad:
            rows[length - pad:] += grad_padded[length:]
        return rows

    def unsort(self, rows: Tensor, slot: int, out: Tensor) -> None:
        """Sorted rows (L, c) of ``slot`` back to pixel order, into ``out`` (N, L, c) of the same dtype:
        the slot's first round writes ``out[n]``, later rounds add to it.

        A gather by the inverse permutation: every pixel reads its own row, no scatter with collisions.
        """
        n, r = divmod(slot, self.n_rounds)
        if r == 0:
            torch.index_select(rows, 0, self.rank[slot], out=out[n])
        else:
            out[n].add_(rows.index_select(0, self.rank[slot]))


def _normalize_backward(x: Tensor, grad: Tensor) -> Tensor:
    """Gradient of ``F.normalize(x, dim=-1, eps=KEY_NORM_EPS)`` w.r.t. ``x``."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    denom = norm.clamp_min(KEY_NORM_EPS)
    unit = x / denom
    radial = (unit * grad).sum(-1, keepdim=True) * (norm >= KEY_NORM_EPS)
    return (grad - unit * radial) / denom


class _BuildWeights(torch.autograd.Function):
    """Embeddings (N, L, C) -> attention weights (slots, nW, w, 3w) and sorted log-sum-exp (slots, P)."""

    @staticmethod
    def forward(ctx, embed: Tensor, plan: _Plan, with_lse: bool, compute_dtype: torch.dtype):
        ctx.set_materialize_grads(False)
        # Row-major embeddings: the key normalisation then reduces over contiguous channels.
        source = embed.contiguous()
        float_dtype = torch.promote_types(embed.dtype, torch.float32)
        w, n_windows = plan.window, plan.n_windows
        weights = embed.new_empty((plan.slots, n_windows, w, 3 * w), dtype=float_dtype)
        lse = embed.new_empty((plan.slots, plan.padded) if with_lse else (0,), dtype=float_dtype)
        # Not scratch: only the pattern's (much larger) weights need to outlive the build.
        gathered = embed.new_empty((plan.extended, embed.shape[-1]))
        raw_low = None
        if compute_dtype != float_dtype:
            raw_low = embed.new_empty((n_windows, w, 3 * w), dtype=compute_dtype)
        with torch.autocast(embed.device.type, enabled=False):
            for b in range(plan.slots):
                _take(source[b // plan.n_rounds], plan.gather_ext[b], gathered)
                queries = plan.windows(plan.middle(gathered).to(compute_dtype))
                keys = F.normalize(gathered.to(float_dtype), p=2, dim=-1, eps=KEY_NORM_EPS).to(compute_dtype)
                raw = weights[b] if raw_low is None else raw_low
                torch.bmm(queries, plan.triples(keys).transpose(1, 2), out=raw)
                if raw_low is not None:
                    weights[b].copy_(raw_low)
                if with_lse:
                    row_max = weights[b].amax(-1)
                _softmax_(weights[b])
                if with_lse:
                    # The largest weight is exp(max - lse), so no second pass of exponentials is needed.
                    lse[b] = (row_max - weights[b].amax(-1).log()).flatten()
        ctx.save_for_backward(embed, weights)
        ctx.plan, ctx.compute_dtype = plan, compute_dtype
        return weights, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, d_weights: Tensor | None, d_lse: Tensor | None):
        embed, weights = ctx.saved_tensors
        plan, cd = ctx.plan, ctx.compute_dtype
        if not ctx.needs_input_grad[0] or (d_weights is None and d_lse is None):
            return None, None, None, None
        source = embed.contiguous()
        channels = embed.shape[-1]
        # Every pixel's gradient is written by its slot's first round: no zero fill.
        d_embed = torch.empty(embed.shape, dtype=weights.dtype, device=embed.device)
        gathered = embed.new_empty((plan.extended, channels))
        d_triples = embed.new_empty((plan.n_windows, 3 * plan.window, channels), dtype=cd)
        d_keys = embed.new_empty((plan.padded, channels), dtype=cd)
        for b in range(plan.slots):
            _take(source[b // plan.n_rounds], plan.gather_ext[b], gathered)
            x_float = gathered.to(weights.dtype)
            keys = F.normalize(x_float, p=2, dim=-1, eps=KEY_NORM_EPS)
            # Softmax backward: d_raw = W * (dW - sum(dW * W)) + W * d_lse.
            w_b = weights[b]
            if d_weights is None:
                d_raw = w_b * d_lse[b].view(*w_b.shape[:2], 1)
            else:
                d_raw = d_weights[b] * w_b
                coef = -d_raw.sum(-1, keepdim=True)
                # A single round's lse is empty; torch.compile hands its gradient in as an empty tensor, not None.
                if d_lse is not None and d_lse.numel():
                    coef += d_lse[b].view_as(coef)
                d_raw.addcmul_(w_b, coef)
            d_raw = d_raw.to(cd)
            d_queries = torch.bmm(d_raw, plan.triples(keys.to(cd))).flatten(0, 1)
            torch.bmm(d_raw.transpose(1, 2), plan.windows(plan.middle(gathered).to(cd)), out=d_triples)
            # Every key is a normalised copy of a padded sorted row: the copies' gradients are summed
            # into that row before the normalisation's backward.
            d_padded = _normalize_backward(plan.middle(x_float), plan.fold_triples(d_triples, d_keys).to(x_float.dtype))
            d_padded += d_queries
            plan.unsort(plan.fold_padding(d_padded), b, d_embed)
        return d_embed.to(embed.dtype), None, None, None


class _ApplyWeights(torch.autograd.Function):
    """Attention weights and values (N, L, Cv) -> per-round outputs in pixel order.

    Output shape (N, L, Cv) for one round, (N, R, L, Cv) otherwise; contiguous, in the dtype of the values.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor, plan: _Plan, compute_dtype: torch.dtype):
        ctx.set_materialize_grads(False)
        source = values.to(compute_dtype)
        cv = values.shape[-1]
        mixing = plan.weights_as(weights, compute_dtype)
        gathered = plan.scratch('values', plan.extended, cv, compute_dtype, values.device)
        mixed = plan.scratch('mixed', plan.padded, cv, compute_dtype, values.device)
        shape = (plan.batch, plan.length, cv) if plan.n_rounds == 1 else (plan.batch, plan.n_rounds, plan.length, cv)
        out = values.new_empty(shape)
        with torch.autocast(values.device.type, enabled=False):
            for b in range(plan.slots):
                n, r = divmod(b, plan.n_rounds)
                _take(source[n], plan.gather_ext[b], gathered)
                torch.bmm(mixing[b], plan.triples(gathered), out=plan.windows(mixed))
                _take(mixed, plan.rank[b], out[n] if plan.n_rounds == 1 else out[n, r])
        ctx.save_for_backward(weights, values)
        ctx.plan, ctx.compute_dtype = plan, compute_dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None):
        weights, values = ctx.saved_tensors
        plan, cd = ctx.plan, ctx.compute_dtype
        want_weights, want_values = ctx.needs_input_grad[:2]
        if d_out is None or not (want_weights or want_values):
            return None, None, None, None
        cv, length = values.shape[-1], plan.length
        d_out = d_out.to(cd)
        source = values.to(cd)
        mixing = plan.weights_as(weights, cd)
        d_weights = torch.empty_like(weights) if want_weights else None
        d_raw_low = None
        if want_weights and cd != weights.dtype:
            d_raw_low = weights.new_empty(weights.shape[1:], dtype=cd)
        # Every pixel's gradient is written by its slot's first round: no zero fill.
        d_values = torch.empty(values.shape, dtype=cd, device=values.device) if want_values else None
        # Backward-only buffers are fresh, not scratch: they should not outlive the backward pass.
        d_sorted = values.new_empty((plan.padded, cv), dtype=cd)
        gathered = values.new_empty((plan.extended, cv), dtype=cd) if want_weights else None
        d_triples = values.new_empty((plan.n_windows, 3 * plan.window, cv), dtype=cd) if want_values else None
        d_rows = values.new_empty((plan.padded, cv), dtype=cd) if want_values else None
        for b in range(plan.slots):
            n, r = divmod(b, plan.n_rounds)
            # Padded rows were dropped in forward: their gradient is zero.
            d_sorted[length:].zero_()
            _take(d_out[n] if plan.n_rounds == 1 else d_out[n, r], plan.order[b], d_sorted[:length])
            if want_weights:
                _take(source[n], plan.gather_ext[b], gathered)
                target = d_weights[b] if d_raw_low is None else d_raw_low
                torch.bmm(plan.windows(d_sorted), plan.triples(gathered).transpose(1, 2), out=target)
                if d_raw_low is not None:
                    d_weights[b].copy_(d_raw_low)
            if want_values:
                torch.bmm(mixing[b].transpose(1, 2), plan.windows(d_sorted), out=d_triples)
                plan.unsort(plan.fold_padding(plan.fold_triples(d_triples, d_rows)), b, d_values)
        if d_values is not None:
            d_values = d_values.to(values.dtype)
        return d_weights, d_values, None, None


@dataclass(eq=False)
class SparsePattern:
    """A learnable sparse attention pattern, reusable for any number of value tensors.

    Attributes:
        weights: (N * n_rounds, nW, window, 3 * window) softmax weights of every sorted window over the
            keys of [previous | itself | next window]; part of the autograd graph of the embeddings.
        round_probs: (N, n_rounds, L) softmax over rounds of each position's log-sum-exp, None for one round.
    """

    weights: Tensor
    round_probs: Tensor | None
    plan: _Plan = field(repr=False)


def build_pattern(embed: Tensor, codes: Tensor, window_size: int) -> SparsePattern:
    """The LCoA attention pattern of ``embed`` (N, L, C) grouped by k-means ``codes`` (N, R, L).

    ``codes`` holds each position's cluster id per round; ``window_size`` is the attention window.
    """
    if embed.dim() != 3:
        raise ValueError(f'embed must be (N, L, C), got shape {tuple(embed.shape)}')
    n, length, _ = embed.shape
    if codes.dim() != 3 or codes.shape[0] != n or codes.shape[2] != length or codes.shape[1] < 1:
        raise ValueError(f'codes must be (N, R, L) = ({n}, R, {length}), got shape {tuple(codes.shape)}')
    if window_size < 1 or length < 1:
        raise ValueError(f'need window_size >= 1 and L >= 1, got {window_size} and {length}')
    plan = _Plan(codes.detach(), window_size)
    float_dtype = torch.promote_types(embed.dtype, torch.float32)
    weights, lse = _BuildWeights.apply(embed, plan, plan.n_rounds > 1, _compute_dtype(embed, float_dtype))
    round_probs = None
    if plan.n_rounds > 1:
        lse_pixels = lse.view(n, plan.n_rounds, plan.padded).gather(2, plan.rank.view(n, plan.n_rounds, length))
        round_probs = torch.softmax(lse_pixels, dim=1)
    return SparsePattern(weights, round_probs, plan)


def apply_pattern(pattern: SparsePattern, values: Tensor) -> Tensor:
    """Attend ``values`` (N, L, Cv) with ``pattern``; returns (N, L, Cv), contiguous, rounds combined.

    Row-major values (channels-last features) are the fast case; any other strides work too.
    """
    plan = pattern.plan
    if values.dim() != 3 or values.shape[0] != plan.batch or values.shape[1] != plan.length:
        raise ValueError(f'values must be ({plan.batch}, {plan.length}, Cv), got shape {tuple(values.shape)}')
    compute_dtype = _compute_dtype(values, pattern.weights.dtype)
    out = _ApplyWeights.apply(pattern.weights, values, plan, compute_dtype)
    if pattern.round_probs is None:
        return out
    return (out * pattern.round_probs.unsqueeze(-1)).sum(1).to(values.dtype)
