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

* sort, padding and undo-sort indices are computed once per pattern, as rows of the (N * L, C)
  matrix of all pixels, so one gather serves any number of batch items and rounds;
* no loop over batch items and rounds (*slots*): every stage (score product, softmax, each
  application, both backward passes) handles a *chunk* of slots with one gather, one batched
  product and one softmax each. A training step's attention is then a few dozen operator calls
  whatever the batch size: on a GPU a step of small patches is bound by launching kernels, and on
  few (possibly shared) CPU cores each call is one parallel region, not one per slot. Chunks are
  whole batch items, as many as fit in ``SCRATCH_BYTES`` of scratch: every training batch of the
  paper's patches is one chunk, and a large image is one item per chunk, so inference keeps the
  scratch of one slot;
* the keys of window ``k`` and its neighbours are ``3 * w`` rows of an *extended* sequence with one
  wrapped window on either side ([last | 0 .. nW-1 | first]). For one slot they are an
  overlapping strided view of its extended sequence, never a copy; for several slots, whose
  neighbours wrap within their own sequences, one batched product needs one batch stride, so one
  gather lays every window's neighbour rows out tripled (``C / w`` of the size of the slots'
  weights, a third in the paper's configuration, and a small fraction of the product's time).
  Either way every window's scores and every application are one batched matrix product with a
  ``3 * w`` inner dimension and a contiguous result;
* keys are normalised once per pixel, not once per round and neighbour copy; the backward pass
  sums the keys' gradients per pixel over rounds and neighbours before the normalisation's backward;
* embeddings and values come as (N, L, C) rows, which the network's channels-last features give
  without a copy (``rearrange(x, 'n c h w -> n (h w) c')`` is a view), and every gather then reads
  whole rows; other layouts are copied into rows first;
* scratch buffers live in the pattern, not in the autograd graph, and are reused by every
  application (fresh large allocations page-fault on every call on some machines); the network
  drops them with the pattern, before its upsampler and the backward pass;
* two ``autograd.Function``s own the backward passes. Building saves only the embeddings and the
  attention weights (the softmax backward needs nothing else; no raw scores are kept), applying
  saves only the values tensor itself (no gathered or tripled copies); gathers are recomputed;
* the backward passes reuse the forward's sort: the gradient w.r.t. every window's [previous | self
  | next] rows is one batched product, folded onto the sorted rows (the wrapped windows and the
  padding added to the rows they repeat) and put back in pixel order by a gather with the inverse
  permutation: no scatter-add, whose colliding indices serialise it;
* nothing reads a device value: chunks and shapes follow from the sizes alone, so on a GPU the host
  never waits for the device and queues kernels ahead (and ``torch.compile`` traces both functions
  without a graph break).

Under autocast the matrix products run in the autocast dtype; softmax, log-sum-exp and the stored
attention weights stay in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from model.blocks.attention_interface import KEY_NORM_EPS

# Upper bound on the scratch memory of one chunk of slots (see _Plan.chunks). Every stage of a training
# step on the paper's patches (batch 16 of 48 x 48, window 384, 128 channels) fits in one chunk, so the
# step's attention is a few dozen kernels on any device; a large image is one slot per chunk, with the
# same scratch as a loop over slots.
SCRATCH_BYTES = 512 * 2**20

# The batched products below write into contiguous (row-major) results and read operands whose
# matrices are row- or column-major with any leading dimension (overlapping batches included):
# that lets every call go to one batched BLAS call (one parallel region) instead of a loop of small
# ones, which matters on few, shared cores.


def _take(src: Tensor, index: Tensor, out: Tensor) -> None:
    """``out = src[index]``: rows of a 2-D (rows, channels) ``src`` into a contiguous ``out``."""
    if src.dtype == out.dtype:
        torch.index_select(src, 0, index, out=out)
    else:
        out.copy_(src.index_select(0, index))


def _rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, L, C) in ``dtype`` as a contiguous (N * L, C) row matrix; a view for row-major input of that dtype."""
    return x.to(dtype).reshape(-1, x.shape[-1])


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


def _normalize_backward(x: Tensor, grad: Tensor) -> Tensor:
    """Gradient of ``F.normalize(x, dim=-1, eps=KEY_NORM_EPS)`` w.r.t. ``x``."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    denom = norm.clamp_min(KEY_NORM_EPS)
    unit = x / denom
    radial = (unit * grad).sum(-1, keepdim=True) * (norm >= KEY_NORM_EPS)
    return (grad - unit * radial) / denom


def _scratch(buffers: dict, name: str, rows: int, channels: int, dtype: torch.dtype,
             device: torch.device) -> Tensor:
    """A reusable contiguous (rows, channels) buffer from ``buffers``, grown on demand; never handed out of
    this module."""
    key = (name, channels, dtype, device)
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < rows:
        buf = buffers[key] = torch.empty((rows, channels), dtype=dtype, device=device)
    return buf[:rows]


class _Plan:
    """Sort/pad/undo-sort indices of one pattern, shared by its build, its applications and their backward passes.

    Slots ``b = n * n_rounds + r`` enumerate (batch item, round) pairs; ``P`` is the padded length. Row
    indices point into an (N * L, C) matrix of pixels (``_rows``): row ``n * L + l`` is pixel ``l`` of item ``n``.
    """

    def __init__(self, codes: Tensor, window_size: int):
        n, n_rounds, length = codes.shape
        self.batch, self.n_rounds, self.length, self.window = n, n_rounds, length, window_size
        self.n_windows = -(-length // window_size)
        self.padded = self.n_windows * window_size
        pad = self.padded - length
        device = codes.device
        order = _cluster_order(codes).reshape(self.slots, length)
        positions = torch.arange(length, device=device)
        # Padding repeats the last `pad` sorted entries; cyclic when pad > L (images smaller than a window).
        padded_source = torch.cat([positions, torch.remainder(torch.arange(pad, device=device) + length - pad, length)])
        # The extended sequence wraps one window around either end: [last | 0 .. nW-1 | first].
        slots = torch.arange(self.padded, device=device)
        ring = torch.cat([slots[-window_size:], slots, slots[:window_size]])
        slot_ids = torch.arange(self.slots, device=device)
        # sorted_rows[b, j]: pixel row of padded sorted slot j; ext_rows[b, j]: of extended sorted slot j;
        # out_rows[b, j]: row b * L + (pixel of padded sorted slot j) of a per-slot (N * R * L, C) matrix;
        # rank[b, l]: sorted slot of pixel l.
        self.item_base = (slot_ids // n_rounds * length).unsqueeze(1)
        padded_order = order[:, padded_source]
        self.sorted_rows = padded_order + self.item_base
        self.ext_rows = self.sorted_rows[:, ring]
        self.out_rows = padded_order + (slot_ids * length).unsqueeze(1)
        self.rank = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
        # unsort_rows[b, l]: row b * P + rank[b, l] of a (slots * P, C) matrix of sorted rows.
        self.unsort_rows = self.rank + (slot_ids * self.padded).unsqueeze(1)
        self.pad_source = padded_source[length:]
        # triple_rows[b]: the extended rows of window k's [previous | self | next] windows, window after
        # window (nW * 3w); only chunks of several slots read them (see take_triples).
        self.triple_rows = None
        if self.slots > 1:
            starts = torch.arange(self.n_windows, device=device).unsqueeze(1) * window_size
            self.triple_rows = self.ext_rows[:, (starts + torch.arange(3 * window_size, device=device)).flatten()]
        self._weights_cast: dict[torch.dtype, Tensor] = {}

    @property
    def slots(self) -> int:
        return self.batch * self.n_rounds

    @property
    def extended(self) -> int:
        """Rows of an extended sequence: the padded length plus one window on either side."""
        return self.padded + 2 * self.window

    @property
    def gather_ext(self) -> Tensor:
        """(slots, extended): the pixel (within its item) at every extended sorted slot."""
        return self.ext_rows - self.item_base

    def chunks(self, bytes_per_slot: int) -> list[tuple[int, int]]:
        """Slot ranges ``[b0, b1)`` of whole batch items whose scratch (``bytes_per_slot`` each) stays within
        ``SCRATCH_BYTES``, at least one item each."""
        items = max(1, min(self.batch, SCRATCH_BYTES // max(1, self.n_rounds * bytes_per_slot)))
        step = items * self.n_rounds
        return [(b0, min(b0 + step, self.slots)) for b0 in range(0, self.slots, step)]

    def weights_as(self, weights: Tensor, dtype: torch.dtype) -> Tensor:
        """The attention weights in the matmul dtype (cast once per pattern, not per application)."""
        if weights.dtype == dtype:
            return weights
        cast = self._weights_cast.get(dtype)
        if cast is None:
            cast = self._weights_cast[dtype] = weights.detach().to(dtype)
        return cast

    def triples(self, x_ext: Tensor) -> Tensor:
        """Extended rows ((nW + 2) * w, c), any 2-D strides -> (nW, 3w, c): the rows of window k's
        [previous | self | next] windows, as an overlapping view (no copy)."""
        row, col = x_ext.stride()
        return x_ext.as_strided((self.n_windows, 3 * self.window, x_ext.shape[1]), (self.window * row, row, col))

    def triples_rows(self, chunk_slots: int) -> int:
        """Rows of the buffer :meth:`take_triples` needs for chunks of up to ``chunk_slots`` slots."""
        return self.extended if chunk_slots == 1 else chunk_slots * 3 * self.padded

    def take_triples(self, src: Tensor, b0: int, b1: int, buf: Tensor) -> Tensor:
        """Keys or values of slots ``[b0, b1)`` for every window's [previous | self | next] rows:
        (slots * nW, 3w, c), gathered from the pixel rows ``src`` (N * L, c) into ``buf`` (at least
        :meth:`triples_rows` rows).

        One slot: its extended sequence and an overlapping view of it (no tripled copy). Several slots:
        their windows' neighbours are in different extended sequences, and a batched product needs one
        batch stride, so the rows are gathered tripled, three window-rows per window, in one gather.
        """
        if b1 - b0 == 1:
            ext = buf[:self.extended]
            _take(src, self.ext_rows[b0], ext)
            return self.triples(ext)
        rows = self.triple_rows[b0:b1].flatten()
        out = buf[:rows.numel()]
        _take(src, rows, out)
        return out.view(-1, 3 * self.window, src.shape[1])

    def fold_triples(self, grad_triples: Tensor, out: Tensor) -> Tensor:
        """Gradient w.r.t. every window's [previous | self | next] rows (s, nW, 3w, c) -> w.r.t. the padded
        sorted rows, written to ``out`` (s, P, c) and returned.

        Window k's rows are the 'self' block of window k, the 'previous' block of window k + 1 and the
        'next' block of window k - 1 (cyclically, within its slot): the adjoint of :meth:`take_triples`.
        """
        w = self.window
        previous, own, following = grad_triples[:, :, :w], grad_triples[:, :, w:2 * w], grad_triples[:, :, 2 * w:]
        out_windows = out.unflatten(1, (self.n_windows, w))
        # Only ``out`` as a whole is contiguous (torch.compile takes no strided ``out=``). ``add_`` on the
        # views, not ``+=`` on an index, which would add a self-copy (one more operator call) after each.
        torch.add(own, previous.roll(-1, 1), out=out_windows)
        out_windows[:, 1:].add_(following[:, :-1])
        out_windows[:, 0].add_(following[:, -1])
        return out

    def fold_padding(self, grad_padded: Tensor) -> None:
        """Gradient w.r.t. the padded sorted rows (s, P, c) -> w.r.t. the sorted rows, in its first L rows, in place."""
        length = self.length
        pad = self.padded - length
        rows = grad_padded[:, :length]
        if pad > length:  # cyclic padding: a row may be repeated more than once
            rows.index_add_(1, self.pad_source, grad_padded[:, length:])
        elif pad:
            rows[:, length - pad:].add_(grad_padded[:, length:])

    def unsort_index(self, b0: int, b1: int) -> Tensor:
        """(s * L,): for pixel l of slot b in ``[b0, b1)``, its row in those slots' (s * P, c) sorted rows."""
        index = self.unsort_rows[b0:b1].flatten()
        return index - b0 * self.padded if b0 else index

    def unsort(self, sorted_rows: Tensor, b0: int, b1: int, out: Tensor) -> None:
        """Sorted rows of slots ``[b0, b1)`` (their first L of every P rows: (s * P, c)) back to pixel order,
        summed over rounds, into their items' rows of ``out`` (N * L, c).

        A gather by the inverse permutation: every pixel reads its own row, no scatter with colliding indices.
        """
        length, n_rounds = self.length, self.n_rounds
        index = self.unsort_index(b0, b1)
        target = out[b0 // n_rounds * length:b1 // n_rounds * length]
        if n_rounds == 1:
            _take(sorted_rows, index, target)
        else:
            pixels = sorted_rows.index_select(0, index).view(-1, n_rounds, length, sorted_rows.shape[1])
            torch.sum(pixels, dim=1, dtype=target.dtype, out=target.view(-1, length, target.shape[1]))


class _BuildWeights(torch.autograd.Function):
    """Embeddings (N, L, C) -> attention weights (slots, nW, w, 3w) and sorted log-sum-exp (slots, P)."""

    @staticmethod
    def forward(ctx, embed: Tensor, plan: _Plan, with_lse: bool, compute_dtype: torch.dtype):
        ctx.set_materialize_grads(False)
        float_dtype = torch.promote_types(embed.dtype, torch.float32)
        w, n_windows, padded, channels = plan.window, plan.n_windows, plan.padded, embed.shape[-1]
        weights = embed.new_empty((plan.slots, n_windows, w, 3 * w), dtype=float_dtype)
        lse = embed.new_empty((plan.slots, padded) if with_lse else (0,), dtype=float_dtype)
        with torch.autocast(embed.device.type, enabled=False):
            # Keys are normalised once per pixel (not per round and neighbour copy), then gathered.
            queries_src = _rows(embed, compute_dtype)
            keys_src = _rows(F.normalize(embed.to(float_dtype), p=2, dim=-1, eps=KEY_NORM_EPS), compute_dtype)
            low = compute_dtype != float_dtype
            cd_size = compute_dtype.itemsize
            per_slot = 4 * padded * channels * cd_size + (weights[0].numel() * cd_size if low else 0)
            chunks = plan.chunks(per_slot)
            most = chunks[0][1] - chunks[0][0]
            # Not scratch: only the pattern's (much larger) weights need to outlive the build.
            queries_buf = embed.new_empty((most * padded, channels), dtype=compute_dtype)
            keys_buf = embed.new_empty((plan.triples_rows(most), channels), dtype=compute_dtype)
            raw_low = embed.new_empty((most * n_windows, w, 3 * w), dtype=compute_dtype) if low else None
            for b0, b1 in chunks:
                s = b1 - b0
                queries = queries_buf[:s * padded]
                _take(queries_src, plan.sorted_rows[b0:b1].flatten(), queries)
                keys = plan.take_triples(keys_src, b0, b1, keys_buf)
                chunk = weights[b0:b1]
                raw = chunk.view(s * n_windows, w, 3 * w) if raw_low is None else raw_low[:s * n_windows]
                torch.bmm(queries.view(s * n_windows, w, channels), keys.transpose(1, 2), out=raw)
                if raw_low is not None:
                    chunk.copy_(raw.view_as(chunk))
                if with_lse:
                    row_max = chunk.amax(-1)
                _softmax_(chunk)
                if with_lse:
                    # The largest weight is exp(max - lse), so no second pass of exponentials is needed.
                    torch.sub(row_max, chunk.amax(-1).log_(), out=lse[b0:b1].view_as(row_max))
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
        # A single round's lse is empty; torch.compile hands its gradient in as an empty tensor, not None.
        if d_lse is not None and not d_lse.numel():
            d_lse = None
        float_dtype = weights.dtype
        w, n_windows, padded, channels = plan.window, plan.n_windows, plan.padded, embed.shape[-1]
        x_float = embed.to(float_dtype)
        queries_src = _rows(embed, cd)
        keys_src = _rows(F.normalize(x_float, p=2, dim=-1, eps=KEY_NORM_EPS), cd)
        # Pixel-order gradients w.r.t. the queries (the embeddings) and the keys (their normalised copies),
        # summed over rounds; every pixel is written once, so no zero fill.
        d_queries_px = embed.new_empty((embed.shape[0] * plan.length, channels), dtype=float_dtype)
        d_keys_px = torch.empty_like(d_queries_px)
        low = cd != float_dtype
        cd_size, float_size = cd.itemsize, float_dtype.itemsize
        per_slot = (weights[0].numel() * (float_size + (cd_size if low else 0)) + 5 * padded * channels * cd_size
                    + (2 * plan.length * channels * cd_size if plan.n_rounds > 1 else 0))
        chunks = plan.chunks(per_slot)
        most = chunks[0][1] - chunks[0][0]
        d_raw_buf = torch.empty((most, *weights.shape[1:]), dtype=float_dtype, device=weights.device)
        triples_buf = embed.new_empty((most * 3 * padded, channels), dtype=cd)
        queries_buf = embed.new_empty((most * padded, channels), dtype=cd)
        d_queries_buf = embed.new_empty((most * padded, channels), dtype=cd)
        for b0, b1 in chunks:
            s = b1 - b0
            # Softmax backward: d_raw = W * (dW - sum(dW * W)) + W * d_lse.
            w_c = weights[b0:b1]
            d_raw = d_raw_buf[:s]
            if d_weights is None:
                torch.mul(w_c, d_lse[b0:b1].view(*w_c.shape[:3], 1), out=d_raw)
            else:
                torch.mul(d_weights[b0:b1], w_c, out=d_raw)
                coef = d_raw.sum(-1, keepdim=True).neg_()
                if d_lse is not None:
                    coef += d_lse[b0:b1].view_as(coef)
                d_raw.addcmul_(w_c, coef)
            d_raw_cd = d_raw.to(cd).view(s * n_windows, w, 3 * w)
            keys = plan.take_triples(keys_src, b0, b1, triples_buf)
            d_queries = d_queries_buf[:s * padded]
            torch.bmm(d_raw_cd, keys, out=d_queries.view(s * n_windows, w, channels))
            queries = queries_buf[:s * padded]
            _take(queries_src, plan.sorted_rows[b0:b1].flatten(), queries)
            # The keys are consumed: their buffer takes the gradient w.r.t. every window's key rows.
            d_triples = triples_buf[:s * 3 * padded].view(s * n_windows, 3 * w, channels)
            torch.bmm(d_raw_cd.transpose(1, 2), queries.view(s * n_windows, w, channels), out=d_triples)
            # Every key is a normalised copy of a padded sorted row: the copies' gradients are summed
            # into that row (in the queries' buffer, consumed too) before the normalisation's backward.
            d_keys = plan.fold_triples(d_triples.view(s, n_windows, 3 * w, channels), queries.view(s, padded, channels))
            for grad, out in ((d_queries, d_queries_px), (d_keys, d_keys_px)):
                plan.fold_padding(grad.view(s, padded, channels))
                plan.unsort(grad.view(s * padded, channels), b0, b1, out)
        d_embed = d_queries_px.add_(_normalize_backward(x_float.reshape(-1, channels), d_keys_px))
        return d_embed.view(embed.shape).to(embed.dtype), None, None, None


class _ApplyWeights(torch.autograd.Function):
    """Attention weights and values (N, L, Cv) -> per-round outputs in pixel order.

    Output shape (N, L, Cv) for one round, (N, R, L, Cv) otherwise; contiguous, in the dtype of the values.
    """

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor, cast: Tensor | None, gathered: Tensor, mixed_buf: Tensor,
                plan: _Plan, chunks: list[tuple[int, int]], compute_dtype: torch.dtype):
        """``cast``: the weights in ``compute_dtype`` if that is not theirs; ``gathered`` and ``mixed_buf``:
        scratch for the largest of the ``chunks`` (``plan.triples_rows`` and P rows per slot)."""
        ctx.set_materialize_grads(False)
        mixing = weights if cast is None else cast
        cv, padded, n_windows, w, length = values.shape[-1], plan.padded, plan.n_windows, plan.window, plan.length
        with torch.autocast(values.device.type, enabled=False):
            source = _rows(values, compute_dtype)
            shape = (plan.batch, length, cv) if plan.n_rounds == 1 else (plan.batch, plan.n_rounds, length, cv)
            out = values.new_empty(shape)
            out_rows = out.view(-1, cv)
            for b0, b1 in chunks:
                s = b1 - b0
                triples = plan.take_triples(source, b0, b1, gathered)
                mixed = mixed_buf[:s * padded]
                torch.bmm(mixing[b0:b1].view(s * n_windows, w, 3 * w), triples, out=mixed.view(s * n_windows, w, cv))
                _take(mixed, plan.unsort_index(b0, b1), out_rows[b0 * length:b1 * length])
        ctx.save_for_backward(weights, values, cast)
        ctx.plan, ctx.compute_dtype = plan, compute_dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None):
        weights, values, cast = ctx.saved_tensors
        mixing = weights if cast is None else cast
        plan, cd = ctx.plan, ctx.compute_dtype
        want_weights, want_values = ctx.needs_input_grad[:2]
        if d_out is None or not (want_weights or want_values):
            return (None,) * 8
        cv, length, padded, n_windows, w = values.shape[-1], plan.length, plan.padded, plan.n_windows, plan.window
        d_out_rows = _rows(d_out, cd)
        source = _rows(values, cd) if want_weights else None
        low = want_weights and cd != weights.dtype
        d_weights = torch.empty_like(weights) if want_weights else None
        # Every pixel's gradient is written once (its rounds summed): no zero fill.
        d_values = values.new_empty((plan.batch * length, cv), dtype=cd) if want_values else None
        cd_size = cd.itemsize
        per_slot = (4 * padded * cv * cd_size + (weights[0].numel() * cd_size if low else 0)
                    + (length * cv * cd_size if plan.n_rounds > 1 else 0))
        chunks = plan.chunks(per_slot)
        most = chunks[0][1] - chunks[0][0]
        # Backward-only buffers are fresh, not scratch: they should not outlive the backward pass.
        d_sorted_buf = values.new_empty((most * padded, cv), dtype=cd)
        triples_buf = values.new_empty((most * 3 * padded, cv), dtype=cd)
        d_raw_low = weights.new_empty((most * n_windows, w, 3 * w), dtype=cd) if low else None
        for b0, b1 in chunks:
            s = b1 - b0
            d_sorted = d_sorted_buf[:s * padded]
            _take(d_out_rows, plan.out_rows[b0:b1].flatten(), d_sorted)
            if padded > length:  # padded rows were dropped in forward: their gradient is zero
                d_sorted.view(s, padded, cv)[:, length:].zero_()
            d_mixed = d_sorted.view(s * n_windows, w, cv)
            if want_weights:
                triples = plan.take_triples(source, b0, b1, triples_buf)
                target = (d_weights[b0:b1].view(s * n_windows, w, 3 * w) if d_raw_low is None
                          else d_raw_low[:s * n_windows])
                torch.bmm(d_mixed, triples.transpose(1, 2), out=target)
                if d_raw_low is not None:
                    d_weights[b0:b1].copy_(target.view_as(d_weights[b0:b1]))
            if want_values:
                d_triples = triples_buf[:s * 3 * padded].view(s * n_windows, 3 * w, cv)
                torch.bmm(mixing[b0:b1].view(s * n_windows, w, 3 * w).transpose(1, 2), d_mixed, out=d_triples)
                # d_sorted is consumed: it takes the folded gradient w.r.t. the padded sorted rows.
                folded = plan.fold_triples(d_triples.view(s, n_windows, 3 * w, cv), d_sorted.view(s, padded, cv))
                plan.fold_padding(folded)
                plan.unsort(d_sorted, b0, b1, d_values)
        if d_values is not None:
            d_values = d_values.view(values.shape).to(values.dtype)
        return d_weights, d_values, None, None, None, None, None, None


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
    # The applications' reusable buffers (see _scratch): held by the pattern, not by the autograd graph, so
    # they go when the network drops the pattern (before the upsampler and the backward pass).
    scratch: dict = field(repr=False)


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
    return SparsePattern(weights, round_probs, plan, {})


def apply_pattern(pattern: SparsePattern, values: Tensor) -> Tensor:
    """Attend ``values`` (N, L, Cv) with ``pattern``; returns (N, L, Cv), contiguous, rounds combined.

    Row-major values (channels-last features) are the fast case; any other strides work too.
    """
    plan = pattern.plan
    if values.dim() != 3 or values.shape[0] != plan.batch or values.shape[1] != plan.length:
        raise ValueError(f'values must be ({plan.batch}, {plan.length}, Cv), got shape {tuple(values.shape)}')
    compute_dtype = _compute_dtype(values, pattern.weights.dtype)
    cv, padded = values.shape[-1], plan.padded
    chunks = plan.chunks(4 * padded * cv * compute_dtype.itemsize)
    most = chunks[0][1] - chunks[0][0]
    gathered = _scratch(pattern.scratch, 'values', plan.triples_rows(most), cv, compute_dtype, values.device)
    mixed = _scratch(pattern.scratch, 'mixed', most * padded, cv, compute_dtype, values.device)
    # (Not the weights twice: torch.compile traces no autograd.Function given one tensor as two inputs.)
    cast = None if compute_dtype == pattern.weights.dtype else plan.weights_as(pattern.weights, compute_dtype)
    out = _ApplyWeights.apply(pattern.weights, values, cast, gathered, mixed, plan, chunks, compute_dtype)
    if pattern.round_probs is None:
        return out
    return (out * pattern.round_probs.unsqueeze(-1)).sum(1).to(values.dtype)
