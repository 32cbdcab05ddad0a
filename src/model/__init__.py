"""The wrapper around the super-resolution network.

:class:`Model` keeps everything that is not the network itself out of it: device placement,
loading ``--pre_train``, and the test-time extras (``--precision`` autocast, ``--self_ensemble``,
``--chop`` tiled inference). In training mode it is the plain network.
"""

import contextlib
import inspect
import warnings
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import distributed
from errors import UserError
from model import checkpoint_io

# --precision -> the autocast dtype of the forward pass (training and test); 'single' runs float32.
AUTOCAST_DTYPES = {'single': None, 'half': torch.float16, 'bf16': torch.bfloat16}


def autocast(precision: str, device_type: str):
    """The ``--precision`` autocast context on ``device_type`` (a null context for 'single')."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


class Model(nn.Module):
    """Builds ``model.<args.model>.make_model(args)`` and runs it for training and testing.

    Args:
        args: parsed options (``option.parse_args``): ``model, device, scale, precision, chop,
            chop_size, chop_overlap, chop_batch, self_ensemble, pre_train``.
        ckp: the run's checkpoint object; only ``ckp.write_log(msg)`` is used.
    """

    def __init__(self, args, ckp) -> None:
        super().__init__()
        self.ckp = ckp
        self.scale = args.scale[0]
        self.device = torch.device(args.device)
        self.precision = args.precision
        self.self_ensemble = args.self_ensemble
        self.chop = args.chop
        self.chop_size = args.chop_size
        self.chop_overlap = args.chop_overlap
        self.chop_batch = args.chop_batch
        self._check_precision()

        module = import_module('model.' + args.model.lower())
        self.model = module.make_model(args).to(self.device)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.ckp.write_log(f'Made {args.model} with {n_params:,} parameters on {self.device}.')
        if args.pre_train:
            self.load_pretrained(args.pre_train)
        if distributed.is_initialized():
            # The k-means centroids are kept equal on every rank by the model itself, from statistics
            # all-reduced over the ranks; DDP's buffer broadcast from rank 0 would overwrite them with
            # rank 0's alone, so the per-forward sync is off.
            self.model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                **ddp_without_buffer_sync())

    def _check_precision(self) -> None:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return
        kind = self.device.type
        if kind == 'cuda' and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UserError(f'--precision {self.precision}: this GPU does not support bfloat16; use half or single')
        # An unsupported autocast dtype only warns and disables itself: probe whether it stays enabled.
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with torch.autocast(kind, dtype=dtype):
                enabled = torch.is_autocast_enabled(kind)
        if not enabled:
            raise UserError(f'--precision {self.precision}: autocast to {dtype} is not supported on {kind}; '
                            'use single')
        if kind == 'cpu':
            _warn_slow_cpu_precision(self.precision, dtype)

    def log(self, msg: str) -> None:
        self.ckp.write_log(msg)

    def get_model(self) -> nn.Module:
        """The bare network, also when it has been wrapped in (Distributed)DataParallel."""
        return getattr(self.model, 'module', self.model)

    def state_dict(self, *args, **kwargs):
        """The bare network's state_dict: keys carry neither ``model.`` nor ``module.``."""
        return self.get_model().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.get_model().load_state_dict(state_dict, strict=strict, assign=assign)

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Load ``--pre_train`` (see :mod:`model.checkpoint_io`); returns the checkpoint keys not loaded."""
        return checkpoint_io.load_checkpoint(self.get_model(), path, log=self.log, what='--pre_train')

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Super-resolve ``lr`` (N, C, h, w) by ``--scale``.

        Training mode: the plain network (through its DDP wrapper, if any). Eval mode: without
        gradients, under ``--precision`` autocast, with ``--self_ensemble`` and ``--chop`` if set;
        the result is float32.
        """
        if self.training:
            return self.model(lr)

        lr = lr.to(self.device)
        # Eval runs the bare network: a DDP forward would start a buffer broadcast that ranks testing
        # different numbers of images would never all join.
        forward = self.forward_chop if self.chop else self.get_model()
        with torch.no_grad(), autocast(self.precision, self.device.type):
            sr = self.forward_x8(lr, forward) if self.self_ensemble else forward(lr)
        return sr.float()

    def forward_x8(self, lr: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Average of ``forward`` over the 8 flips/transposes of ``lr``, each output transformed back."""
        # A float64 sum of eight float32 outputs is exact in practice, so the mean is rounded once and
        # does not depend on the order of the transforms.
        total = None
        for k in range(8):
            sr = _untransform(forward(_transform(lr, k)), k)
            total = sr.double() if total is None else total.add_(sr)
        return total.div_(8).float()

    def forward_chop(self, lr: torch.Tensor) -> torch.Tensor:
        """Tiled forward: overlapping ``chop_size`` LR tiles, ``chop_batch`` per network call.

        Each tile's output is cropped to its share of the image (the overlap with a neighbour is
        split in the middle, so half of it is discarded on each inner side) and written into a
        preallocated float32 output. Memory beyond input and output is that of ``chop_batch``
        tiles. An image that fits into one tile is run as a whole, so chopping changes nothing.
        """
        n, _, h, w = lr.shape
        net = self.get_model()
        if h <= self.chop_size and w <= self.chop_size:
            return net(lr)

        scale = self.scale
        rows = _tile_spans(h, self.chop_size, self.chop_overlap)
        cols = _tile_spans(w, self.chop_size, self.chop_overlap)
        tiles = [(i, r, c) for i in range(n) for r in rows for c in cols]
        tile_h, tile_w = min(h, self.chop_size), min(w, self.chop_size)
        sr = None
        for first in range(0, len(tiles), self.chop_batch):
            group = tiles[first:first + self.chop_batch]
            batch = torch.cat([lr[i:i + 1, :, r[0]:r[0] + tile_h, c[0]:c[0] + tile_w] for i, r, c in group])
            out = net(batch)
            if out.shape[-2:] != (scale * tile_h, scale * tile_w):
                raise RuntimeError(f'--chop: the network turned {tile_h}x{tile_w} tiles into '
                                   f'{out.shape[-2]}x{out.shape[-1]}, not x{scale}')
            if sr is None:
                sr = torch.empty(n, out.shape[1], scale * h, scale * w, dtype=torch.float32, device=out.device)
            for j, (i, (r0, r_keep0, r_keep1), (c0, c_keep0, c_keep1)) in enumerate(group):
                sr[i, :, scale * r_keep0:scale * r_keep1, scale * c_keep0:scale * c_keep1] = out[
                    j, :, scale * (r_keep0 - r0):scale * (r_keep1 - r0), scale * (c_keep0 - c0):scale * (c_keep1 - c0)]
            del batch, out
        return sr


def ddp_without_buffer_sync() -> dict:
    """The DistributedDataParallel keyword that turns off its buffer broadcast at every forward.

    torch 2.13 added ``forward_sync_buffers`` and deprecated ``broadcast_buffers``; earlier releases (the
    CUDA machines' 2.11) have only the latter, which also skips the broadcast when DDP is built. That
    one changes nothing here: every rank builds the network from the same seed and loads the same
    checkpoint, so the buffers already agree.
    """
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters:
        return {'forward_sync_buffers': False}
    return {'broadcast_buffers': False}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); else torch emulates it."""
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')  # private: absent from some torch builds
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _warn_slow_cpu_precision(precision: str, dtype: torch.dtype) -> None:
    """One warning for a --precision the CPU emulates (float16 always; bfloat16 without AVX512-BF16/AMX)."""
    native_bf16 = cpu_has_native_bf16()
    if dtype == torch.float16:
        better = 'single' + (' or bf16 (this CPU has bfloat16 in hardware)' if native_bf16 else '')
        warnings.warn(f'--precision {precision} on the CPU: float16 is emulated and runs many times slower than '
                      f'single; use --precision {better}', stacklevel=3)
    elif dtype == torch.bfloat16 and not native_bf16:
        warnings.warn(f'--precision {precision} on the CPU: this CPU has no bfloat16 hardware (AVX512-BF16 or AMX), '
                      'so it is emulated and runs many times slower than single; use --precision single',
                      stacklevel=3)


def _tile_spans(length: int, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis as ``(start, keep_from, keep_to)``; each tile is ``min(size, length)`` long.

    Starts step by ``size - overlap``; the last tile is moved back to end at ``length``. Neighbours
    share their overlap in the middle, so the kept parts cover ``[0, length)`` exactly once.
    """
    if length <= size:
        return [(0, 0, length)]
    stride = size - overlap
    starts = list(range(0, length - size, stride)) + [length - size]
    bounds = [0] + [(nxt + cur + size) // 2 for cur, nxt in zip(starts, starts[1:], strict=False)] + [length]
    return [(s, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def _transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/transposes: bit 0 flips left-right, bit 1 up-down, bit 2 transposes."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-2, -1)
    return x.contiguous()


def _untransform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`_transform` (the transpose is undone before the flips)."""
    if k & 4:
        x = x.transpose(-2, -1)
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    return x
