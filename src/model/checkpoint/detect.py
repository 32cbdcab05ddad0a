"""Recognise a checkpoint's architecture and hyper-parameters from its state_dict alone.

Every architecture (``model.registry``) leaves a distinctive set of key names, and its
hyper-parameters are readable from tensor shapes: widths from the head convolution, depths from
how many numbered blocks exist, the scale from the upsampler, ``rgb_range`` from the mean-shift bias
(``-rgb_range * DIV2K mean``). A few options leave no trace in the weights (attention window and
chunk sizes, ``res_scale``, the centroids' EMA decay, ``rgb_range`` without a mean shift); they take
the published values and are reported as *assumed*.

Detection is checked, not guessed: after reading the options off the shapes, the full key/shape
listing that architecture would have with those options is rebuilt (``Architecture.shapes``) and
must equal the checkpoint's. Anything else raises :class:`UnknownCheckpoint` naming the keys at
fault, so a detected configuration always loads strictly.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from model import registry
from model.checkpoint import files, layouts
from model.checkpoint.layouts import DEFAULT_RGB_RANGE
from model.spec import PLACEHOLDER_KEYS, Architecture, Layout, UnknownCheckpoint, mismatch, rgb_range_of

# How many keys a message lists before "and N more".
_LIST_AT_MOST = 5

__all__ = ['Detected', 'UnknownCheckpoint', 'detect_architecture', 'expected_shapes', 'identify', 'recognise']


@dataclass(frozen=True)
class Detected:
    """What a state_dict says about the network that saved it.

    Attributes:
        model: the architecture's name (``model.registry``).
        options: option name -> value read from the weights (``scale`` is an int).
        assumed: option name -> published value, for options the weights do not record.
        layout: the other code base whose key names the checkpoint has (``Layout.source``); '' for ours.
    """

    model: str
    options: dict[str, Any]
    assumed: dict[str, Any] = field(default_factory=dict)
    layout: str = ''

    @property
    def scale(self) -> int:
        return self.options['scale']

    def describe(self) -> str:
        """``'LCoAN x2 (n_feats=32, ...); assumed: window_size=384, ...'``."""
        shown = ', '.join(f'{k}={v}' for k, v in self.options.items() if k != 'scale')
        text = f'{self.model} x{self.scale} ({shown})'
        if self.assumed:
            text += '; assumed (not stored in the weights): ' + ', '.join(f'{k}={v}' for k, v in self.assumed.items())
        if self.layout:
            text += f'; in the layout of {self.layout}'
        return text


def expected_shapes(model: str, **options) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state_dict that ``model`` built with ``options`` has."""
    return registry.get(model).shapes(**options)


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    more = f' and {len(keys) - _LIST_AT_MOST} more' if len(keys) > _LIST_AT_MOST else ''
    return ', '.join(keys[:_LIST_AT_MOST]) + more


def _layout_error(arch: Architecture, options: dict, want: dict, have: dict) -> UnknownCheckpoint:
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    resized = [f'{k} {have[k]} (expected {want[k]})' for k in want if k in have and have[k] != want[k]]
    parts = [f'{label}: {_listing(keys)}' for label, keys in
             (('missing', missing), ('unexpected', extra), ('shape', resized)) if keys]
    return mismatch(f'looks like {arch.name} x{options["scale"]} but its layout differs from the one {arch.name} '
                    'builds: ' + '; '.join(parts))


def detect_architecture(state: dict[str, torch.Tensor]) -> Detected:
    """The model and options that produced ``state`` (a plain state_dict): :func:`recognise`'s ``Detected``."""
    return recognise(state)[1]


def recognise(state: dict[str, torch.Tensor], *, rgb_range: float | None = None,
              layout: str | None = None) -> tuple[dict[str, torch.Tensor], Detected]:
    """``state`` in our layout, and the model and options that produced it.

    Wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) are removed and another code base's
    layout is renamed to ours first (:func:`layouts.in_our_layout`; ``rgb_range`` and ``layout`` are
    passed to it), then :func:`identify` tells the architecture.
    """
    state = files.strip_prefixes(state, log=lambda _: None)
    state, found_layout = layouts.in_our_layout(state, rgb_range=rgb_range, layout=layout)
    return state, identify(state, found_layout, rgb_range=rgb_range)


def identify(state: dict[str, torch.Tensor], layout: Layout | None = None, *,
             rgb_range: float | None = None) -> Detected:
    """The model and options that produced ``state``, a state_dict in our layout (renamed from ``layout``, for
    ``rgb_range`` when that layout keeps the mean shift out of its weights).

    Raises:
        UnknownCheckpoint: no known architecture has these keys and shapes; the message (one line,
            without the file name: callers prefix it) names the keys it does not recognise, or those
            that differ from the closest architecture's layout.
    """
    if not state:
        raise UnknownCheckpoint('an empty state_dict: it holds no weights')
    archs = registry.architectures().values()
    everyone = ', '.join(registry.names()) + (f' ({registry.broken_note()})' if registry.broken() else '')
    candidates = [a for a in archs if a.signature in state]
    foreign = [k for k in state if not any(a.knows_key(k) for a in archs)]
    if not candidates or foreign:
        which = f'{len(foreign)} of its {len(state)} keys are unknown to {everyone}: '
        if not foreign:
            which = f'its {len(state)} keys match no architecture of {everyone}: '
            foreign = list(state)
        raise UnknownCheckpoint('not a super-resolution checkpoint this program knows; ' + which + _listing(foreign))
    errors = []
    layout_range = (DEFAULT_RGB_RANGE if rgb_range is None else rgb_range) if layout else None
    for arch in candidates:  # one, unless two architectures share a signature key: the one whose layout fits
        try:
            return _verified(arch, state, layout, layout_range)
        except UnknownCheckpoint as e:
            errors.append(e)
    raise errors[0]


def _verified(arch: Architecture, state: dict[str, torch.Tensor], layout: Layout | None,
              layout_range: float | None) -> Detected:
    """``arch`` with the options read from ``state``, if rebuilding it with them gives exactly ``state``'s layout.

    A placeholder key (``a``) may be missing. For a ``layout`` that keeps the mean shift out of its
    weights, ``rgb_range`` is reported as assumed: ``layout_range``, the one it was converted for.
    """
    options = arch.read_options(state)
    bad = [k for k, v in options.items() if isinstance(v, int) and v <= 0]
    if bad:
        raise mismatch(f'{arch.name}-like keys, but {", ".join(bad)} cannot be read from the shapes')
    want = arch.shapes(**options)
    have = {k: tuple(v.shape) for k, v in state.items()}
    for key in PLACEHOLDER_KEYS:
        if key in want and key not in have:
            del want[key]
    if want != have:
        raise _layout_error(arch, options, want, have)

    assumed = arch.assumed(options)
    rgb_range = rgb_range_of(state)
    if layout is not None and layout.mean_outside:
        assumed['rgb_range'] = layout_range
    elif rgb_range is None:  # an architecture's ``assume`` may say what its published weights run on
        assumed.setdefault('rgb_range', DEFAULT_RGB_RANGE)
    else:
        options['rgb_range'] = rgb_range
    return Detected(model=arch.name, options=options, assumed=assumed, layout=layout.source if layout else '')
