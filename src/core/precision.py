"""``--precision``: the dtype the forward pass computes in, for training and for inference.

``single`` runs float32; ``half`` and ``bf16`` run the forward under autocast (:func:`autocast`),
which keeps the weights in float32 and numerically sensitive operations (softmax, reductions) in
float32. The parsers check the name; :func:`check` checks once, where the device is known, that the
device can run it.
"""

import contextlib
import warnings

import torch

from core.errors import UserError

# --precision -> the autocast dtype; 'single' runs float32.
AUTOCAST_DTYPES = {'single': None, 'half': torch.float16, 'bf16': torch.bfloat16}
PRECISIONS = tuple(AUTOCAST_DTYPES)


def autocast(precision: str, device_type: str):
    """The ``--precision`` autocast context on ``device_type`` (a null context for 'single')."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f'precision {precision!r}: allowed: {", ".join(PRECISIONS)}')
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def scales_the_loss(precision: str) -> bool:
    """float16 gradients underflow unless the loss is scaled; bfloat16 has float32's range."""
    return AUTOCAST_DTYPES[precision] == torch.float16


def check(precision: str, device: torch.device) -> None:
    """UserError if ``device`` cannot run ``precision``; one warning if the CPU only emulates it."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return
    kind = device.type
    if kind == 'cuda' and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError(f'--precision {precision}: this GPU does not support bfloat16; use half or single')
    # An unsupported autocast dtype only warns and disables itself: probe whether it stays enabled.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with torch.autocast(kind, dtype=dtype):
            enabled = torch.is_autocast_enabled(kind)
    if not enabled:
        raise UserError(f'--precision {precision}: autocast to {dtype} is not supported on {kind}; use single')
    if kind == 'cpu':
        _warn_slow_cpu_precision(precision, dtype)


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
