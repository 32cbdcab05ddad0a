"""Tiled inference in bounded memory, and the choice of tile and halo.

An image is cut into *cores* that cover it exactly once; each core is run with ``halo`` extra LR
pixels of context on every side (fewer at the image border) and only the core's part of the output
is kept. For a purely convolutional network whose receptive-field radius is at most ``halo``, the
kept pixels see exactly what they would see in the whole image, so the tiled result equals the
untiled one up to float rounding (:func:`receptive_radius` gives a safe ``halo``). For networks with
non-local parts (LCoAN and NLSN attention, RCAN's global channel pooling) a tile only attends within
itself, so tiling changes the result slightly; the halo then only softens the seams.

The automatic tile size comes from the available memory and the network's measured peak memory
per LR pixel (:func:`peak_bytes_per_pixel`, on a small probe tile).
"""

import math
import os
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Models whose output depends only on a bounded LR neighbourhood (no attention, no global pooling).
LOCAL_MODELS = frozenset({'EDSR', 'RDN'})
# Context around tiles of non-local networks (LR pixels): more only costs time, seams are invisible.
NONLOCAL_HALO = 16
# Fraction of the available memory that the tiles may use; the rest is for the image and the program.
MEMORY_FRACTION = 0.5
PROBE_SIZE = 64
MIN_TILE = 32

Forward = Callable[[Tensor], Tensor]


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


def default_halo(net: nn.Module, model_name: str) -> tuple[int, bool]:
    """``(halo, exact)``: the receptive radius for local models (tiling is then exact), else a context margin."""
    radius = receptive_radius(net)
    if model_name in LOCAL_MODELS:
        return radius, True
    return min(radius, NONLOCAL_HALO), False


def spans(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as ``(start, stop, keep_from, keep_to)`` in LR pixels.

    The kept parts ``[keep_from, keep_to)`` cover ``[0, length)`` once, in near-equal cores of at
    most ``tile - 2 * halo``; each tile adds up to ``halo`` pixels of context on either side.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    core = tile - 2 * halo
    if core < 1:
        raise ValueError(f'tile {tile} leaves no room inside a halo of {halo} on each side')
    count = math.ceil(length / core)
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [(max(a - halo, 0), min(b + halo, length), a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def tiled_forward(forward: Forward, lr: Tensor, *, scale: int, tile: int, halo: int, device: torch.device | str,
                  progress: Callable | None = None) -> Tensor:
    """``forward(lr)`` computed tile by tile; tiles run on ``device``, the result is assembled on ``lr``'s device.

    Args:
        forward: the network (or its self-ensemble), (1, C, h, w) -> (1, C', scale*h, scale*w).
        lr: (N, C, H, W) LR image(s), typically on the CPU.
        scale: the network's upscaling factor.
        tile: largest LR tile (context included) run at once.
        halo: LR context pixels around each tile's kept part.
        device: where the network runs.
        progress: wraps the list of tiles for display (e.g. ``tqdm``), when there is more than one.
    """
    _, _, h, w = lr.shape
    if h <= tile and w <= tile:
        return forward(lr.to(device)).float().to(lr.device)
    grid = [(r, c) for r in spans(h, tile, halo) for c in spans(w, tile, halo)]
    out = None
    for (r0, r1, rk0, rk1), (c0, c1, ck0, ck1) in (progress(grid) if progress else grid):
        sr = forward(lr[:, :, r0:r1, c0:c1].to(device)).float()
        if sr.shape[-2:] != (scale * (r1 - r0), scale * (c1 - c0)):
            raise RuntimeError(f'the network turned a {r1 - r0}x{c1 - c0} tile into {sr.shape[-2]}x{sr.shape[-1]}, '
                               f'not x{scale}')
        if out is None:
            out = torch.empty(lr.shape[0], sr.shape[1], scale * h, scale * w, dtype=torch.float32, device=lr.device)
        out[:, :, scale * rk0:scale * rk1, scale * ck0:scale * ck1] = sr[
            :, :, scale * (rk0 - r0):scale * (rk1 - r0), scale * (ck0 - c0):scale * (ck1 - c0)].to(lr.device)
    return out


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
