"""Reading a weights file into a plain ``state_dict``, with checks and clear errors naming the file.

The file is read by :func:`io_utils.load_state` (``torch.load(..., weights_only=True)``, or the
``safetensors`` package): a checkpoint is a plain ``state_dict`` (a dict of tensors, as the official
LCoAN and EDSR release them), or one nested under a training checkpoint's
``state_dict``/``model``/``params(_ema)`` entry. A file that is missing, is not a PyTorch checkpoint,
holds pickled objects other than tensors, or holds NaN or inf values (weights of a diverged run:
every output would be NaN) raises :class:`errors.UserError` naming the file (and the first
non-finite tensor). The prefixes that wrappers put before every key (``module.``, ``_orig_mod.``,
``model.``) are removed by :func:`strip_prefixes`.
"""

from collections.abc import Callable
from pathlib import Path

import torch

from core.errors import UserError
from core.io_utils import load_state

# What wrappers put before every key: (Distributed)DataParallel, torch.compile, and a module that
# holds the network as ``self.model`` (Lightning modules, EMA wrappers). Removed in any nesting.
WRAPPER_PREFIXES = ('module.', '_orig_mod.', 'model.')
# Entries under which training scripts commonly nest the state_dict, in order of preference.
WRAPPER_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net')


def read_state_dict(path: str | Path, *, what: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """Load a plain ``state_dict`` from ``path`` onto the CPU, refusing anything but tensors.

    Args:
        path: the ``.pt`` file.
        what: how error messages introduce the file, e.g. ``'--pre_train'``.

    Raises:
        UserError: the file is missing, is not a PyTorch checkpoint, holds pickled objects other
            than tensors, or is not a dict from string keys to tensors.
    """
    obj = load_state(path, what=what)
    if not isinstance(obj, dict):
        raise UserError(f'{what} {path}: expected a state_dict (a dict of tensors), found a {type(obj).__name__}')
    if not obj:
        raise UserError(f'{what} {path}: an empty state_dict: it holds no weights')
    obj = unwrap_state_dict(obj)
    empty = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and not obj[k]]
    if empty and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f'{what} {path}: its {empty[0]!r} entry is empty: the file holds no weights')
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        nested = [k for k in bad if isinstance(obj[k], dict)]
        hint = f" (it nests one under {nested[0]!r}; save that entry on its own)" if nested else ''
        raise UserError(f'{what} {path}: expected a state_dict (a dict of tensors), but entry {bad[0]!r} '
                        f'is a {type(obj[bad[0]]).__name__}{hint}')
    check_dtypes(obj, f'{what} {path}')
    check_finite(obj, f'{what} {path}')
    return obj


def check_dtypes(state: dict[str, torch.Tensor], source: str) -> None:
    """UserError naming ``source`` and the first tensor of ``state`` in an 8-bit float format, which no network
    here holds (and whose values torch cannot even test for NaN)."""
    for key, value in state.items():
        if value.is_floating_point() and value.dtype.itemsize == 1:
            raise UserError(f'{source}: tensor {key} is {str(value.dtype).removeprefix("torch.")}: 8-bit float '
                            'weights are not read; save them as float32, float16 or bfloat16')


def unwrap_state_dict(obj: dict) -> dict:
    """The state_dict inside a training checkpoint that wraps it, else ``obj`` itself.

    People save ``{'state_dict': sd, 'optimizer': ...}``, ``{'model': sd, ...}`` or BasicSR's
    ``{'params': sd, 'params_ema': sd}`` (whose EMA weights are the ones to evaluate). A wrapper is
    only looked into when ``obj`` itself is not a flat dict of tensors.
    """
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return obj


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """UserError naming ``source`` and the first tensor of ``state`` that holds NaN or inf."""
    for key, value in state.items():
        if not (torch.is_tensor(value) and value.is_floating_point()):
            continue
        finite = torch.isfinite(value)
        if not finite.all():
            n_nan = int(torch.isnan(value).sum())
            n_inf = value.numel() - int(finite.sum()) - n_nan
            kinds = ' and '.join(f'{n} {kind}' for n, kind in ((n_nan, 'NaN'), (n_inf, 'inf')) if n)
            raise UserError(f'{source}: tensor {key} holds {kinds} of {value.numel()} values; refusing weights '
                            'that are not finite (saved from a run that diverged?)')


def strip_prefixes(state: dict[str, torch.Tensor], *, log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Remove the :data:`WRAPPER_PREFIXES` that every key has (``module._orig_mod.`` too), naming them in ``log``."""
    removed = []
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        removed.append(prefix)
    if removed:
        log(f"Checkpoint was saved from a wrapper (DataParallel, torch.compile, a module holding the network): "
            f"removed the leading '{''.join(removed)}' of its {len(state)} keys.")
    return state
