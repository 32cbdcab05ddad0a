"""Reading state dicts from disk and loading them into a network, with checks and clear errors.

Every load goes through :func:`io_utils.load_state` (``torch.load(..., weights_only=True)``): a checkpoint is a plain
``state_dict`` (a dict of tensors, as the official LCoAN and EDSR release them), or one nested under a
training checkpoint's ``state_dict``/``model``/``params(_ema)`` entry. A file that is missing, is not a
PyTorch checkpoint, holds pickled objects other than tensors, or holds NaN or inf values (weights of a
diverged run: every output would be NaN) raises :class:`errors.UserError` naming the file (and the
first non-finite tensor).

Keys and shapes must match the network exactly, with two exceptions:

- The papers fine-tune their x3 and x4 models from the x2 one (``--scale 4 --pre_train LCoAN_x2.pt``).
  When the only differences are in the upsampler (``tail.0.*``; a network names another with an
  ``upsampler_prefix`` attribute, e.g. RDN's ``UPNet.``), every other tensor is loaded and the
  network keeps its freshly initialised upsampler, as a whole; the log names what was kept and skipped.
- The placeholder parameter ``a`` (unused by forward, present in the official LCoAN and NLSN-repository
  RCAN checkpoints, absent from RCAN's own ``RCAN_BIX2.pt``, spandrel's and super-image's RCAN) may be
  missing; the network keeps its own.

Before that, a checkpoint in another code base's layout (``Architecture.layouts``: BasicSR's EDSR
and RCAN) is renamed to ours (:func:`in_our_layout`), and the prefixes that wrappers put before every
key (``module.``, ``_orig_mod.``, ``model.``) are removed (:func:`strip_prefixes`).
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError
from core.io_utils import load_state
from model import registry
from model.spec import PLACEHOLDER_KEYS, Layout, UnknownCheckpoint, natural_order, rgb_range_of, upsampler_scale

UPSAMPLER_PREFIX = 'tail.0.'
# What wrappers put before every key: (Distributed)DataParallel, torch.compile, and a module that
# holds the network as ``self.model`` (Lightning modules, EMA wrappers). Removed in any nesting.
WRAPPER_PREFIXES = ('module.', '_orig_mod.', 'model.')
# EDSR-PyTorch's rgb_range, assumed for a layout that keeps the mean shift out of its weights (BasicSR's img_range).
DEFAULT_RGB_RANGE = 255
# Entries under which training scripts commonly nest the state_dict, in order of preference.
WRAPPER_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net')
# How many mismatched keys an error message lists before it says "and N more".
_LIST_AT_MOST = 4


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


def _check_floating(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """UserError naming the first tensor that the network holds as floating point but ``state`` does not
    (integers, bool, complex): copied in, it would be rounded or cast without a word. Tensors the network
    itself holds as integers (an index buffer) are compared by shape only."""
    for key, value in state.items():
        if key in own and own[key].is_floating_point() and not value.is_floating_point():
            raise UserError(f'{source}: tensor {key} is {str(value.dtype).removeprefix("torch.")}, but the '
                            f'network holds it as {str(own[key].dtype).removeprefix("torch.")}; refusing weights '
                            'that are not floating point')


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


def layouts() -> dict[str, list[Layout]]:
    """Layout name -> the layouts of that name (one per architecture that has it), from the registry."""
    found: dict[str, list[Layout]] = {}
    for arch in registry.architectures().values():
        for layout in arch.layouts:
            found.setdefault(layout.name, []).append(layout)
    return found


def in_our_layout(state: dict[str, torch.Tensor], *, rgb_range: float | None = None,
                  layout: str | None = None) -> tuple[dict[str, torch.Tensor], Layout | None]:
    """``state`` in our key names, and the other code base's layout it was in (None: already ours).

    Args:
        state: a plain state_dict, prefixes removed.
        rgb_range: for a layout that keeps the mean shift out of its weights, the ``rgb_range`` to
            build it for (None: 255, BasicSR's ``img_range`` default).
        layout: read ``state`` as this layout (``'super-image'``, whose weights cannot be told from
            ours); None: recognise it by a layout's signature key.

    Raises:
        UnknownCheckpoint: ``layout`` is given but no architecture's layout of that name fits ``state``.
    """
    rgb_range = DEFAULT_RGB_RANGE if rgb_range is None else rgb_range
    if layout is None:
        owned = {arch.signature for arch in registry.architectures().values()}
        if any(k in state for k in owned):
            return state, None
        found = [lay for group in layouts().values() for lay in group if lay.signature and lay.signature in state]
    else:  # a layout without a signature key has ours: the architecture's own signature tells whose it is
        found = [lay for arch in registry.architectures().values() for lay in arch.layouts
                 if lay.name == layout and (lay.signature or arch.signature) in state]
        if not found:
            known = ', '.join(layouts())
            raise UnknownCheckpoint(f'not in the {layout!r} layout of any architecture (layouts read: {known})')
    if not found:
        return state, None
    return natural_order(found[0].to_ours(state, rgb_range)), found[0]


def read_weights(path: str | Path, *, what: str, log: Callable[[str], None], rgb_range: float | None = None,
                 layout: str | None = None) -> tuple[dict[str, torch.Tensor], Layout | None]:
    """:func:`read_state_dict`, :func:`strip_prefixes` and :func:`in_our_layout`: ``path``'s weights in our key names.

    A checkpoint in another layout is named in ``log``, with what is assumed for it.
    """
    state = strip_prefixes(read_state_dict(path, what=what), log=log)
    try:
        state, found = in_our_layout(state, rgb_range=rgb_range, layout=layout)
    except UnknownCheckpoint as e:
        raise UnknownCheckpoint(f'{what} {path}: {e}') from None
    if found is not None:
        note = (f'; rgb_range {DEFAULT_RGB_RANGE if rgb_range is None else rgb_range} and the DIV2K mean assumed '
                '(not stored in its weights)' if found.mean_outside else '')
        log(f'{what} {path} is in the layout of {found.source}: its keys were renamed to ours{note}.')
    return state, found


def upsampler_prefix(network: nn.Module) -> str:
    """The state_dict prefix of ``network``'s upsampler: its ``upsampler_prefix`` attribute, else ``tail.0.``."""
    return getattr(network, 'upsampler_prefix', UPSAMPLER_PREFIX)


def _fmt_shape(shape: torch.Size) -> str:
    return str(tuple(shape))


def _listing(keys: list[str]) -> str:
    more = f' and {len(keys) - _LIST_AT_MOST} more' if len(keys) > _LIST_AT_MOST else ''
    return ', '.join(keys[:_LIST_AT_MOST]) + more


def load_into(network: nn.Module, state: dict[str, torch.Tensor], *, source: str,
              log: Callable[[str], None], allow_new_upsampler: bool = True) -> list[str]:
    """Copy ``state`` into ``network``, strictly, except for the upsampler swap described above.

    Args:
        network: the bare network (not a DDP wrapper).
        state: a state_dict, already read (``module.`` prefixes already stripped).
        source: names the checkpoint in messages, e.g. ``'--pre_train LCoAN_x2.pt'``.
        log: receives one line per notable event (a skipped upsampler).
        allow_new_upsampler: False to require an exact match (resuming a run).

    Returns:
        The checkpoint keys that were not loaded (empty on an exact match).

    Raises:
        UserError: keys or shapes differ outside the upsampler (or anywhere, without
            ``allow_new_upsampler``); the message lists the first keys with both shapes. A tensor that is
            floating point in the network but not in ``state``.
    """
    own = network.state_dict()
    _check_floating(own, state, source)
    prefix = upsampler_prefix(network)
    absent = [k for k in PLACEHOLDER_KEYS if k in own and k not in state]
    if absent:
        state = {**state, **{k: own[k].detach().clone() for k in absent}}
        log(f'{source} has no {", ".join(absent)} (a placeholder the network never uses): kept the network\'s own.')
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [k for k in own if k in state and state[k].shape != own[k].shape]
    differing = missing + unexpected + resized
    if not differing:
        network.load_state_dict(state, strict=True)
        return []

    only_upsampler = all(k.startswith(prefix) for k in differing)
    if not (only_upsampler and allow_new_upsampler):
        parts = []
        if resized:
            parts.append('shape mismatch: ' + _listing(
                [f'{k} checkpoint {_fmt_shape(state[k].shape)} vs model {_fmt_shape(own[k].shape)}' for k in resized]))
        if missing:
            parts.append('missing from the checkpoint: ' + _listing(missing))
        if unexpected:
            parts.append('not in the model: ' + _listing(unexpected))
        hint = '' if not only_upsampler else ' (only the upsampler differs: the checkpoint is for another scale)'
        raise UserError(f'{source} does not fit this model{hint}; ' + '; '.join(parts)
                        + '. Check --model, --scale and the model flags (--n_feats, --n_resgroups, --n_resblocks, '
                        '--n_clusters, --reduction, --G0, --RDNconfig, --n_colors) against the run that saved it.')

    # The upsampler is a unit: a x2 conv in the first slot of a x4 upsampler would feed a stage it was
    # never trained with, so the whole fresh upsampler is kept rather than a shape-compatible part.
    skipped = [k for k in state if k.startswith(prefix)]
    kept = [k for k in own if k.startswith(prefix)]
    merged = {k: (own[k].detach().clone() if k in kept else state[k]) for k in own}
    network.load_state_dict(merged, strict=True)

    def scale_of(s):
        found = upsampler_scale(s, prefix)
        return f'x{found}' if found else 'another scale'

    new_scale, old_scale = scale_of(own), scale_of(state)
    log(f'Loaded {source} except its upsampler: kept the new {new_scale} upsampler '
        f'({", ".join(kept)}): checkpoint was trained for {old_scale}; skipped checkpoint keys: '
        + ', '.join(f'{k} {_fmt_shape(state[k].shape)}' for k in skipped) + '.')
    return skipped


def load_checkpoint(network: nn.Module, path: str | Path, *, log: Callable[[str], None],
                    what: str = 'checkpoint', allow_new_upsampler: bool = True) -> list[str]:
    """Read ``path`` and load it into ``network``: :func:`read_state_dict` then :func:`load_into`.

    Args:
        network: the bare network.
        path: the ``.pt`` state_dict.
        log: receives progress lines.
        what: how messages introduce the file, e.g. ``'--pre_train'``.
        allow_new_upsampler: see :func:`load_into`; False for resuming a run.

    Returns:
        The checkpoint keys that were not loaded.
    """
    state, _ = read_weights(path, what=what, log=log, rgb_range=rgb_range_of(network.state_dict()))
    skipped = load_into(network, state, source=f'{what} {path}', log=log, allow_new_upsampler=allow_new_upsampler)
    log(f'Loaded {what} {path} ({len(state) - len(skipped)} tensors).')
    return skipped
