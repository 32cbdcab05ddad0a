"""Inference with a trained network: precision, the 8-way self-ensemble and tiling, in one place.

``main.py --test_only`` (``model.Model`` in eval mode), ``api.upscale`` and ``upscale.py`` all run
:func:`make_forward` (no gradients, ``--precision`` autocast, optionally the self-ensemble) through
:func:`tiled_forward` when the image is cut into tiles.

**Precision.** ``half`` and ``bf16`` run the forward under autocast (:mod:`core.precision`); the
output is float32 either way.

**Self-ensemble.** The network runs on the 8 flips/transposes of the input; each output is
transformed back and the mean taken (in float64, so the order of the eight does not matter).

**Tiling.** An image is cut into tiles along each axis by a list of spans ``(start, stop, keep_from,
keep_to)``: a tile covers LR ``[start, stop)`` and contributes only its part ``[keep_from, keep_to)``,
and the kept parts cover the image exactly once. Two ways to place them:

- :func:`overlap_spans` (``--chop``): tiles of one size, neighbours overlapping by at least
  ``overlap`` pixels, each keeping its half of every overlap; all tiles have one shape, so several
  run in one batch.
- :func:`halo_spans` (``upscale.py --tile``): near-equal *cores* with ``halo`` pixels of context on
  every side (fewer at the border). For a purely convolutional network whose receptive-field radius
  is at most ``halo`` (:func:`receptive_radius`), the kept pixels see exactly what they would see in
  the whole image, so the tiled result equals the untiled one up to float rounding. For networks
  with non-local parts (attention, global channel pooling) a tile only attends within itself, so
  tiling changes the result slightly; the halo then only softens the seams.

The automatic tile size comes from the available memory and the network's measured peak memory
per LR pixel (:func:`peak_bytes_per_pixel`, on a small probe tile).
"""

import math
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from core import precision as precisions

# Context around tiles of non-local networks (LR pixels): more only costs time, seams are invisible.
NONLOCAL_HALO = 16
# Fraction of the available memory that the tiles may use; the rest is for the image and the program.
MEMORY_FRACTION = 0.5
PROBE_SIZE = 64
MIN_TILE = 32
# The smallest core a tile keeps inside its halo (LR pixels): smaller cores cost many times the work of the image.
MIN_CORE = 16

Forward = Callable[[Tensor], Tensor]
Span = tuple[int, int, int, int]


# -- self-ensemble

def _transform(x: Tensor, k: int) -> Tensor:
    """The k-th of the 8 flips/transposes: bit 0 flips left-right, bit 1 up-down, bit 2 transposes."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-2, -1)
    return x.contiguous()


def _untransform(x: Tensor, k: int) -> Tensor:
    """Inverse of :func:`_transform` (the transpose is undone before the flips)."""
    if k & 4:
        x = x.transpose(-2, -1)
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    return x


def self_ensemble(forward: Forward, lr: Tensor) -> Tensor:
    """Mean of ``forward`` over the 8 flips/transposes of ``lr``, each output transformed back (float32)."""
    # A float64 sum of eight float32 outputs is exact in practice, so the mean is rounded once and
    # does not depend on the order of the transforms.
    total = None
    for k in range(8):
        sr = _untransform(forward(_transform(lr, k)).float(), k)
        total = sr.double() if total is None else total.add_(sr)
    return total.div_(8).float()


def make_forward(net: nn.Module, *, precision: str = 'single', ensemble: bool = False,
                 device_type: str | None = None) -> Forward:
    """``net`` as a function of an LR tensor for inference: no gradients, ``precision`` autocast,
    optionally the self-ensemble; returns float32."""
    if device_type is None:
        device_type = next(net.parameters()).device.type

    def forward(x: Tensor) -> Tensor:
        with torch.no_grad(), precisions.autocast(precision, device_type):
            if ensemble:
                return self_ensemble(net, x)
            return net(x.contiguous()).float()

    return forward


# -- tiling


def receptive_radius(net: nn.Module) -> int:
    """An upper bound of the network's receptive-field radius in LR pixels.

    The sum of the radii of all its convolutions: exact for a chain of convolutions at LR resolution,
    larger than needed where convolutions sit on parallel branches or after the upsampler (one HR
    pixel is less than one LR pixel), which keeps it safe as a halo.
    """
    radius = 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            dh, dw = m.dilation
            radius += max((kh - 1) // 2 * dh, (kw - 1) // 2 * dw)
    return radius


def default_halo(net: nn.Module, local: bool) -> tuple[int, bool]:
    """``(halo, exact)``: the receptive radius for a purely local network (tiling is then exact), else a
    context margin (``local``: ``Architecture.local`` of the network's architecture)."""
    radius = receptive_radius(net)
    if local:
        return radius, True
    return min(radius, NONLOCAL_HALO), False


def min_tile(halo: int) -> int:
    """The smallest tile for :func:`halo_spans` with ``halo``: a core of ``MIN_CORE`` pixels inside the halo."""
    return 2 * halo + MIN_CORE


def halo_spans(length: int, tile: int, halo: int) -> list[Span]:
    """Tiles of at most ``tile`` LR pixels along one axis: near-equal cores of at most ``tile - 2 * halo``,
    each with up to ``halo`` pixels of context on either side."""
    if length <= tile:
        return [(0, length, 0, length)]
    core = tile - 2 * halo
    if core < 1:
        raise ValueError(f'tile {tile} leaves no room inside a halo of {halo} on each side')
    count = math.ceil(length / core)
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [(max(a - halo, 0), min(b + halo, length), a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def overlap_spans(length: int, size: int, overlap: int) -> list[Span]:
    """Tiles of exactly ``min(size, length)`` LR pixels along one axis, starting every ``size - overlap``
    pixels (the last one moved back to end at ``length``); neighbours share their overlap in the middle."""
    if length <= size:
        return [(0, length, 0, length)]
    stride = size - overlap
    starts = list(range(0, length - size, stride)) + [length - size]
    bounds = [0] + [(nxt + cur + size) // 2 for cur, nxt in zip(starts, starts[1:], strict=False)] + [length]
    return [(s, s + size, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def tiled_forward(forward: Forward, lr: Tensor, *, scale: int, rows: Sequence[Span], cols: Sequence[Span],
                  batch: int = 1, device: torch.device | str | None = None, progress: Callable | None = None) -> Tensor:
    """``forward(lr)`` computed tile by tile; the result (float32) is assembled on ``lr``'s device.

    Args:
        forward: the network for inference (:func:`make_forward`), (n, C, h, w) -> (n, C', scale*h, scale*w).
        lr: (N, C, H, W) LR image(s).
        scale: the network's upscaling factor.
        rows, cols: the tiles along H and W (:func:`halo_spans` or :func:`overlap_spans`).
        batch: tiles of the same shape run together, this many at a time.
        device: where the network runs (default: ``lr``'s device).
        progress: wraps the list of tile batches for display (e.g. ``tqdm``), when there is more than one.
    """
    n, _, h, w = lr.shape
    device = lr.device if device is None else device
    if len(rows) == 1 and len(cols) == 1:
        return forward(lr.to(device)).float().to(lr.device)
    tiles = [(i, r, c) for i in range(n) for r in rows for c in cols]
    groups: list[list] = []
    for tile in tiles:  # consecutive tiles of one shape, ``batch`` at most, make one forward call
        group = groups[-1] if groups else None
        if group and len(group) < batch and _extent(group[0]) == _extent(tile):
            group.append(tile)
        else:
            groups.append([tile])
    out = None
    for group in (progress(groups) if progress and len(groups) > 1 else groups):
        inputs = torch.cat([lr[i:i + 1, :, r[0]:r[1], c[0]:c[1]] for i, r, c in group]).to(device)
        sr = forward(inputs).float()
        tile_h, tile_w = _extent(group[0])
        if sr.shape[-2:] != (scale * tile_h, scale * tile_w):
            raise RuntimeError(f'the network turned a {tile_h}x{tile_w} tile into {sr.shape[-2]}x{sr.shape[-1]}, '
                               f'not x{scale}')
        if out is None:
            out = torch.empty(n, sr.shape[1], scale * h, scale * w, dtype=torch.float32, device=lr.device)
        for j, (i, (r0, _, rk0, rk1), (c0, _, ck0, ck1)) in enumerate(group):
            out[i, :, scale * rk0:scale * rk1, scale * ck0:scale * ck1] = sr[
                j, :, scale * (rk0 - r0):scale * (rk1 - r0), scale * (ck0 - c0):scale * (ck1 - c0)].to(lr.device)
        del inputs, sr
    return out


def _extent(tile) -> tuple[int, int]:
    _, (r0, r1, _, _), (c0, c1, _, _) = tile
    return r1 - r0, c1 - c0


class _PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensors alive at once among those created inside the context (storages counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[tuple, int] = {}
        self.refs: dict[tuple, int] = {}
        self.now = 0
        self.peak = 0

    def _release(self, key: tuple) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.now -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = (storage.data_ptr(), str(t.device))
                if key not in self.sizes:
                    self.sizes[key] = storage.nbytes()
                    self.refs[key] = 0
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def peak_bytes_per_pixel(forward: Forward, n_colors: int, device: torch.device | str, size: int = PROBE_SIZE) -> float:
    """Peak memory of ``forward`` on a ``size`` x ``size`` probe image, per LR pixel.

    Every tensor the forward creates is tracked until it is freed (a dispatch mode), so the number
    holds on any device; the memory of these networks grows linearly with the pixels.
    """
    probe = torch.rand(1, n_colors, size, size, device=device)
    with torch.no_grad(), _PeakTensorMemory() as tracker:
        forward(probe)
    return tracker.peak / (size * size)


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device``: the GPU's free memory, or the system's MemAvailable (Linux) on the CPU."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path('/proc/meminfo')
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def auto_tile(bytes_per_pixel: float, available: int, fraction: float = MEMORY_FRACTION) -> int:
    """The side of the largest square LR tile whose forward fits into ``fraction`` of ``available`` bytes."""
    side = int(math.sqrt(fraction * available / max(bytes_per_pixel, 1.0)))
    return max(MIN_TILE, side // 8 * 8)
