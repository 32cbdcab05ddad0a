"""Recognise a checkpoint's architecture and hyper-parameters from its state_dict alone.

Every model of this codebase (LCoAN and the EDSR-PyTorch baselines EDSR, RCAN, RDN, NLSN) leaves a
distinctive set of key names, and its hyper-parameters are readable from tensor shapes: widths from
the head convolution, depths from how many numbered blocks exist, the scale from the upsampler,
``rgb_range`` from the mean-shift bias (``-rgb_range * DIV2K mean``). A few options leave no trace
in the weights (attention window and chunk sizes, ``res_scale``, the centroids' EMA decay, RDN's
``rgb_range``); they take the published values and are reported as *assumed*.

Detection is checked, not guessed: after reading the options off the shapes, the full key/shape
listing that architecture would have with those options is rebuilt (:func:`expected_shapes`) and
must equal the checkpoint's. Anything else raises :class:`UnknownCheckpoint` naming the keys at
fault, so a detected configuration always loads strictly.
"""

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from model import checkpoint_io, common

Shapes = dict[str, tuple[int, ...]]

MODELS = ('LCoAN', 'EDSR', 'RCAN', 'RDN', 'NLSN')
# EDSR-PyTorch's default for models without a mean shift (RDN), whose weights do not reveal it.
DEFAULT_RGB_RANGE = 255
# RDN's named configurations: (D blocks, C convs per block, G growth channels).
RDN_CONFIGS = {'A': (20, 6, 32), 'B': (16, 8, 64)}
# NLSN's attention embeds into channels // 4 (fixed in the official model, not a flag).
NLSN_REDUCTION = 4
NLSN_ATTENTION_EVERY = 8
# Published values of the options that are not stored in the weights.
ASSUMED = {
    'LCoAN': {'window_size': 384, 'res_scale': 0.1, 'ema_decay': 0.999},
    'NLSN': {'chunk_size': 144, 'n_hashes': 4, 'res_scale': 0.1},
    'RCAN': {},
    'RDN': {},
}
EDSR_PAPER = {'n_resblocks': 32, 'n_feats': 256}
# How many keys a message lists before "and N more".
_LIST_AT_MOST = 5


class UnknownCheckpoint(UserError):
    """The state_dict is not one of the architectures above (or is one in a layout we cannot build)."""


@dataclass(frozen=True)
class Detected:
    """What a state_dict says about the network that saved it.

    Attributes:
        model: one of :data:`MODELS`.
        options: option name -> value read from the weights (``scale`` is an int).
        assumed: option name -> published value, for options the weights do not record.
    """

    model: str
    options: dict[str, Any]
    assumed: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return self.options['scale']

    def describe(self) -> str:
        """``'LCoAN x2 (n_feats=32, ...); assumed: window_size=384, ...'``."""
        shown = ', '.join(f'{k}={v}' for k, v in self.options.items() if k != 'scale')
        text = f'{self.model} x{self.scale} ({shown})'
        if self.assumed:
            text += '; assumed (not stored in the weights): ' + ', '.join(f'{k}={v}' for k, v in self.assumed.items())
        return text


# -- key/shape listings of each architecture, as its code builds them

def _conv(prefix: str, c_out: int, c_in: int, k: int) -> Shapes:
    return {prefix + 'weight': (c_out, c_in, k, k), prefix + 'bias': (c_out,)}


def _mean_shifts(n_colors: int) -> Shapes:
    return {**_conv('sub_mean.', n_colors, n_colors, 1), **_conv('add_mean.', n_colors, n_colors, 1)}


def _upsampler(prefix: str, scale: int, n_feats: int) -> Shapes:
    """EDSR-PyTorch's ``Upsampler``: conv to 4x channels + PixelShuffle(2) per factor 2, or one 9x stage for 3."""
    if scale == 3:
        return _conv(prefix + '0.', 9 * n_feats, n_feats, 3)
    out: Shapes = {}
    for i in range(int(math.log2(scale))):
        out.update(_conv(f'{prefix}{2 * i}.', 4 * n_feats, n_feats, 3))
    return out


def _resblock(prefix: str, n_feats: int) -> Shapes:
    return {**_conv(prefix + 'body.0.', n_feats, n_feats, 3), **_conv(prefix + 'body.2.', n_feats, n_feats, 3)}


def _edsr_like(*, scale: int, n_colors: int, n_feats: int, body: Shapes) -> Shapes:
    return {**_mean_shifts(n_colors), **_conv('head.0.', n_feats, n_colors, 3), **body,
            **_upsampler('tail.0.', scale, n_feats), **_conv('tail.1.', n_colors, n_feats, 3)}


def lcoan_shapes(*, scale: int, n_colors: int, n_feats: int, n_resgroups: int, n_resblocks: int, reduction: int,
                 n_clusters: int, n_hashes: int, **_) -> Shapes:
    body: Shapes = {}
    for g in range(n_resgroups):
        p = f'body.{g}.'
        for b in range(n_resblocks):
            body.update(_resblock(f'{p}local_body.{b}.', n_feats))
        att = p + 'attention.0.'
        body[att + 'kmeans.means'] = (n_hashes, n_clusters, n_feats // reduction)
        body[att + 'kmeans.initted'] = ()
        body.update(_conv(att + 'conv_match.0.', n_feats // reduction, n_feats, 3))
        body.update(_conv(att + 'conv_assembly.0.', n_feats, n_feats, 1))
        body.update(_conv(p + 'm_conv.0.', n_feats, n_feats, 3))
    body.update(_conv('m_conv.0.', n_feats, n_feats, 3))
    return {'a': (1,), **_edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)}


def edsr_shapes(*, scale: int, n_colors: int, n_feats: int, n_resblocks: int, **_) -> Shapes:
    body: Shapes = {}
    for b in range(n_resblocks):
        body.update(_resblock(f'body.{b}.', n_feats))
    body.update(_conv(f'body.{n_resblocks}.', n_feats, n_feats, 3))
    return _edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)


def rcan_shapes(*, scale: int, n_colors: int, n_feats: int, n_resgroups: int, n_resblocks: int, reduction: int,
                **_) -> Shapes:
    body: Shapes = {}
    for g in range(n_resgroups):
        for b in range(n_resblocks):
            p = f'body.{g}.body.{b}.'
            body.update(_resblock(p, n_feats))
            body.update(_conv(p + 'body.3.conv_du.0.', n_feats // reduction, n_feats, 1))
            body.update(_conv(p + 'body.3.conv_du.2.', n_feats, n_feats // reduction, 1))
        body.update(_conv(f'body.{g}.body.{n_resblocks}.', n_feats, n_feats, 3))
    body.update(_conv(f'body.{n_resgroups}.', n_feats, n_feats, 3))
    return {'a': (1,), **_edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)}


def nlsn_shapes(*, scale: int, n_colors: int, n_feats: int, n_resblocks: int, **_) -> Shapes:
    def attention(i: int) -> Shapes:
        return {**_conv(f'body.{i}.conv_match.0.', n_feats // NLSN_REDUCTION, n_feats, 3),
                **_conv(f'body.{i}.conv_assembly.0.', n_feats, n_feats, 1)}

    body = attention(0)
    i = 1
    for b in range(n_resblocks):
        body.update(_resblock(f'body.{i}.', n_feats))
        i += 1
        if (b + 1) % NLSN_ATTENTION_EVERY == 0:
            body.update(attention(i))
            i += 1
    body.update(_conv(f'body.{i}.', n_feats, n_feats, 3))
    return _edsr_like(scale=scale, n_colors=n_colors, n_feats=n_feats, body=body)


def rdn_shapes(*, scale: int, n_colors: int, G0: int, RDNkSize: int, RDNconfig: str, **_) -> Shapes:  # noqa: N803
    k = RDNkSize
    n_blocks, n_convs, growth = RDN_CONFIGS[RDNconfig]
    out = {**_conv('SFENet1.', G0, n_colors, k), **_conv('SFENet2.', G0, G0, k)}
    for d in range(n_blocks):
        for c in range(n_convs):
            out.update(_conv(f'RDBs.{d}.convs.{c}.conv.0.', growth, G0 + c * growth, k))
        out.update(_conv(f'RDBs.{d}.LFF.', G0, G0 + n_convs * growth, 1))
    out.update(_conv('GFF.0.', G0, n_blocks * G0, 1))
    out.update(_conv('GFF.1.', G0, G0, k))
    if scale == 4:
        out.update(_conv('UPNet.0.', growth * 4, G0, k))
        out.update(_conv('UPNet.2.', growth * 4, growth, k))
        out.update(_conv('UPNet.4.', n_colors, growth, k))
    else:
        out.update(_conv('UPNet.0.', growth * scale * scale, G0, k))
        out.update(_conv('UPNet.2.', n_colors, growth, k))
    return out


SHAPES: dict[str, Callable[..., Shapes]] = {
    'LCoAN': lcoan_shapes, 'EDSR': edsr_shapes, 'RCAN': rcan_shapes, 'RDN': rdn_shapes, 'NLSN': nlsn_shapes}


def expected_shapes(model: str, **options) -> Shapes:
    """Key -> shape of the state_dict that ``model`` built with ``options`` has."""
    return SHAPES[model](**options)


# -- reading options off a state_dict

def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices ``i`` from 0 have a key matching ``pattern.format(i=i)``."""
    n = 0
    while pattern.format(i=n) in state:
        n += 1
    return n


def _rgb_range(state: dict[str, torch.Tensor]) -> float | None:
    """``rgb_range`` from ``add_mean.bias = rgb_range * DIV2K mean`` (None when the bias is not of that form)."""
    bias = state.get('add_mean.bias')
    if bias is None or bias.dim() != 1 or bias.numel() not in (1, 3):
        return None
    mean = torch.tensor(common.DIV2K_RGB_MEAN, dtype=torch.float64)
    if bias.numel() == 1:
        mean = mean.mean().reshape(1)
    value = float(bias.double().sum() / mean.sum())
    if not math.isfinite(value) or value <= 0 or not torch.allclose(bias.double(), value * mean, rtol=1e-4):
        return None
    return int(round(value)) if abs(value - round(value)) < 1e-3 * max(1.0, value) else value


def _upsampler_scale(state: dict[str, torch.Tensor]) -> int:
    scale = checkpoint_io.upsampler_scale(state)
    if scale is None:
        raise _mismatch(state, 'its upsampler (tail.0.*) is not a conv + PixelShuffle stack')
    return scale


def _read_lcoan(state):
    n_feats, n_colors = _shape(state, 'head.0.weight')[:2]
    n_hashes, n_clusters, dim = _shape(state, 'body.0.attention.0.kmeans.means')
    return dict(scale=_upsampler_scale(state), n_colors=n_colors, n_feats=n_feats,
                n_resgroups=_count(state, 'body.{i}.m_conv.0.weight'),
                n_resblocks=_count(state, 'body.0.local_body.{i}.body.0.weight'),
                reduction=n_feats // dim if dim and n_feats % dim == 0 else 0,
                n_clusters=n_clusters, n_hashes=n_hashes)


def _read_edsr(state):
    n_feats, n_colors = _shape(state, 'head.0.weight')[:2]
    return dict(scale=_upsampler_scale(state), n_colors=n_colors, n_feats=n_feats,
                n_resblocks=_count(state, 'body.{i}.body.0.weight'))


def _read_rcan(state):
    n_feats, n_colors = _shape(state, 'head.0.weight')[:2]
    squeeze = _shape(state, 'body.0.body.0.body.3.conv_du.0.weight')[0]
    return dict(scale=_upsampler_scale(state), n_colors=n_colors, n_feats=n_feats,
                n_resgroups=_count(state, 'body.{i}.body.0.body.0.weight'),
                n_resblocks=_count(state, 'body.0.body.{i}.body.3.conv_du.0.weight'),
                reduction=n_feats // squeeze if squeeze and n_feats % squeeze == 0 else 0)


def _read_nlsn(state):
    n_feats, n_colors = _shape(state, 'head.0.weight')[:2]
    n_resblocks = sum(1 for k in state if re.fullmatch(r'body\.\d+\.body\.0\.weight', k))
    return dict(scale=_upsampler_scale(state), n_colors=n_colors, n_feats=n_feats, n_resblocks=n_resblocks)


def _read_rdn(state):
    g0, n_colors, k = _shape(state, 'SFENet1.weight')[:3]
    layout = (_count(state, 'RDBs.{i}.LFF.weight'), _count(state, 'RDBs.0.convs.{i}.conv.0.weight'),
              _shape(state, 'RDBs.0.convs.0.conv.0.weight')[0] if 'RDBs.0.convs.0.conv.0.weight' in state else 0)
    config = next((name for name, dcg in RDN_CONFIGS.items() if dcg == layout), None)
    if config is None:
        known = '; '.join(f'{n}: D={d}, C={c}, G={g}' for n, (d, c, g) in RDN_CONFIGS.items())
        raise _mismatch(state, f'an RDN with D={layout[0]} blocks, C={layout[1]} convs, G={layout[2]} channels, '
                               f'which is no --RDNconfig ({known})')
    growth = layout[2]
    if 'UPNet.4.weight' in state:
        scale = 4
    else:
        ratio = _shape(state, 'UPNet.0.weight')[0] // growth
        scale = math.isqrt(ratio) if ratio in (4, 9) else 0
    return dict(scale=scale, n_colors=n_colors, G0=g0, RDNkSize=k, RDNconfig=config)


# (model, key that only it has, reader), checked in this order.
_SIGNATURES = (
    ('RDN', 'SFENet1.weight', _read_rdn),
    ('LCoAN', 'body.0.attention.0.kmeans.means', _read_lcoan),
    ('NLSN', 'body.0.conv_match.0.weight', _read_nlsn),
    ('RCAN', 'body.0.body.0.body.3.conv_du.0.weight', _read_rcan),
    ('EDSR', 'body.0.body.0.weight', _read_edsr),
)
# Every key name any of the architectures uses (indices generalised), to name the foreign ones.
_KNOWN_KEY = re.compile(r'''(
    a | (sub|add)_mean\.(weight|bias) | head\.0\.(weight|bias) | m_conv\.0\.(weight|bias)
  | tail\.0\.\d+\.(weight|bias) | tail\.1\.(weight|bias)
  | body\.\d+\.(weight|bias)
  | body\.\d+\.body\.[02]\.(weight|bias)
  | body\.\d+\.(conv_match|conv_assembly)\.0\.(weight|bias)
  | body\.\d+\.local_body\.\d+\.body\.[02]\.(weight|bias) | body\.\d+\.m_conv\.0\.(weight|bias)
  | body\.\d+\.attention\.0\.(kmeans\.(means|initted)|(conv_match|conv_assembly)\.0\.(weight|bias))
  | body\.\d+\.body\.\d+\.(weight|bias) | body\.\d+\.body\.\d+\.body\.([02]|3\.conv_du\.[02])\.(weight|bias)
  | SFENet[12]\.(weight|bias) | RDBs\.\d+\.(convs\.\d+\.conv\.0|LFF)\.(weight|bias)
  | GFF\.[01]\.(weight|bias) | UPNet\.[024]\.(weight|bias)
)''', re.VERBOSE)


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    more = f' and {len(keys) - _LIST_AT_MOST} more' if len(keys) > _LIST_AT_MOST else ''
    return ', '.join(keys[:_LIST_AT_MOST]) + more


def _mismatch(state, why: str) -> UnknownCheckpoint:
    return UnknownCheckpoint(f'not a checkpoint of a model this program can build: {why}')


def detect_architecture(state: dict[str, torch.Tensor]) -> Detected:
    """The model and options that produced ``state`` (a plain state_dict; ``module.`` prefixes are removed).

    Raises:
        UnknownCheckpoint: no known architecture has these keys and shapes; the message (one line,
            without the file name: callers prefix it) names the keys it does not recognise, or those
            that differ from the closest architecture's layout.
    """
    if state and all(k.startswith(checkpoint_io.DDP_PREFIX) for k in state):
        state = {k[len(checkpoint_io.DDP_PREFIX):]: v for k, v in state.items()}
    foreign = [k for k in state if not _KNOWN_KEY.fullmatch(k)]
    match = next(((m, read) for m, key, read in _SIGNATURES if key in state), None)
    if match is None or foreign:
        which = f'{len(foreign)} of its {len(state)} keys are unknown to LCoAN, EDSR, RCAN, RDN and NLSN: '
        if not foreign:
            which = f'its {len(state)} keys match no architecture of LCoAN, EDSR, RCAN, RDN and NLSN: '
            foreign = list(state)
        raise UnknownCheckpoint('not a super-resolution checkpoint this program knows; ' + which + _listing(foreign))
    model, read = match
    options = read(state)
    bad = [k for k, v in options.items() if isinstance(v, int) and v <= 0]
    if bad:
        raise _mismatch(state, f'{model}-like keys, but {", ".join(bad)} cannot be read from the shapes')
    want = expected_shapes(model, **options)
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        missing = [k for k in want if k not in have]
        extra = [k for k in have if k not in want]
        resized = [f'{k} {have[k]} (expected {want[k]})' for k in want if k in have and have[k] != want[k]]
        parts = [f'{label}: {_listing(keys)}' for label, keys in
                 (('missing', missing), ('unexpected', extra), ('shape', resized)) if keys]
        raise _mismatch(state, f'looks like {model} x{options["scale"]} but its layout differs from the one '
                               f'{model} builds: ' + '; '.join(parts))

    assumed = dict(ASSUMED.get(model, {}))
    if model == 'EDSR':
        # EDSR-PyTorch scales the residuals of its large (paper) model only.
        paper = all(options[k] == v for k, v in EDSR_PAPER.items())
        assumed['res_scale'] = 0.1 if paper else 1
    rgb_range = _rgb_range(state)
    if rgb_range is None:
        assumed['rgb_range'] = DEFAULT_RGB_RANGE
    else:
        options['rgb_range'] = rgb_range
    return Detected(model=model, options=options, assumed=assumed)


def read_checkpoint(path: str | Path, *, what: str = 'checkpoint') -> tuple[dict[str, torch.Tensor], Detected]:
    """Read ``path`` (see :func:`checkpoint_io.read_state_dict`) and detect its architecture.

    Returns ``(state_dict without module. prefixes, detected)``; errors name the file.
    """
    state = checkpoint_io.strip_ddp_prefix(checkpoint_io.read_state_dict(path, what=what), log=lambda _: None)
    try:
        return state, detect_architecture(state)
    except UnknownCheckpoint as e:
        raise UnknownCheckpoint(f'{what} {path}: {e}') from None


def fill_options(args, detected: Detected, given: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set every detected and assumed option on ``args`` that is not in ``given``.

    ``args`` holds the raw parsed flags (before ``option.finalize``): ``scale`` is written as the
    string the parser would produce. Returns ``(filled detected, filled assumed)``.
    """
    given = set(given)
    filled: dict[str, Any] = {}
    assumed: dict[str, Any] = {}
    for source, target in (({'model': detected.model, **detected.options}, filled), (detected.assumed, assumed)):
        for key, value in source.items():
            if key in given:
                continue
            setattr(args, key, str(value) if key == 'scale' else value)
            target[key] = value
    return filled, assumed


def apply_pre_train(args) -> str:
    """``--pre_train X.pt`` with architecture flags left out: fill them from the checkpoint.

    Flags in ``args.given`` (command line or ``--template``) win; a contradiction then surfaces as
    the loader's mismatch error naming keys and shapes. Returns the log line (empty without
    ``--pre_train``).
    """
    path = args.pre_train
    if not path or path == '.' or not Path(path).exists():
        return ''  # nothing to read: a missing file is reported by the loader, naming it
    _, detected = read_checkpoint(path, what='--pre_train')
    filled, assumed = fill_options(args, detected, args.given)
    kept = sorted(({'model'} | set(detected.options)) & set(args.given))
    line = f'--pre_train {path}: {detected.model} x{detected.scale} checkpoint; '
    line += ('options read from the weights: ' + ', '.join(f'{k}={v}' for k, v in filled.items())
             if filled else 'no options filled from the weights')
    if assumed:
        line += '; assumed (not stored in the weights): ' + ', '.join(f'{k}={v}' for k, v in assumed.items())
    if kept:
        line += '; as given (flags or --template): ' + ', '.join(kept)
    return line + '.'
