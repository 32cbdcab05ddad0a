"""Copying a state_dict into a network: strictly, with two exceptions, and errors that name the keys at fault.

- The papers fine-tune their x3 and x4 models from the x2 one (``--scale 4 --pre_train LCoAN_x2.pt``).
  When the only differences are in the upsampler (``tail.0.*``; a network names another with an
  ``upsampler_prefix`` attribute, e.g. RDN's ``UPNet.``), every other tensor is loaded and the
  network keeps its freshly initialised upsampler, as a whole; the log names what was kept and skipped.
- The placeholder parameter ``a`` (unused by forward, present in the official LCoAN and NLSN-repository
  RCAN checkpoints, absent from RCAN's own ``RCAN_BIX2.pt``, spandrel's and super-image's RCAN) may be
  missing; the network keeps its own.
"""

from collections.abc import Callable

import torch
from torch import nn

from core.errors import UserError
from model.spec import PLACEHOLDER_KEYS, upsampler_scale

UPSAMPLER_PREFIX = 'tail.0.'
# How many mismatched keys an error message lists before it says "and N more".
_LIST_AT_MOST = 4


def _check_floating(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """UserError naming the first tensor that the network holds as floating point but ``state`` does not
    (integers, bool, complex): copied in, it would be rounded or cast without a word. Tensors the network
    itself holds as integers (an index buffer) are compared by shape only."""
    for key, value in state.items():
        if key in own and own[key].is_floating_point() and not value.is_floating_point():
            raise UserError(f'{source}: tensor {key} is {str(value.dtype).removeprefix("torch.")}, but the '
                            f'network holds it as {str(own[key].dtype).removeprefix("torch.")}; refusing weights '
                            'that are not floating point')


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
