"""What an architecture file declares about itself, and the helpers it declares it with.

Every ``model/<name>.py`` that defines ``ARCH = Architecture(...)`` is an architecture of this
codebase (:mod:`model.registry` finds them): ``--model <name>`` builds it, ``--help`` lists its
flags and published defaults, checkpoint detection recognises its weights, and the tests run its
tiny configuration. ``docs/adding_a_model.md`` walks through one.

This module sits below the architecture files and the registry (it imports neither), so both
can use it without importing each other in a circle.
"""

import math
import re
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from model.blocks.common import DIV2K_RGB_MEAN

# What every network reads besides its architecture's flags, when not given (``--n_colors``, ``--rgb_range``).
N_COLORS = 3
RGB_RANGE = 255

Shapes = dict[str, tuple[int, ...]]
StateDict = Mapping[str, torch.Tensor]
# Parameters that forward never reads, kept only for checkpoint compatibility: a checkpoint may lack them.
PLACEHOLDER_KEYS = ('a',)


class UnknownCheckpoint(UserError):
    """A state_dict that is not one of the architectures (or one in a layout they cannot build)."""


@dataclass(frozen=True)
class Layout:
    """Another code base's ``state_dict`` of the same network: its key names, and the maps to and from ours.

    A checkpoint in such a layout is renamed to ours on reading (detection, ``--pre_train``,
    ``api.load_pretrained``, ``upscale.py``), and ``convert.py --layout NAME`` writes it.

    Attributes:
        name: what ``convert.py --layout`` / ``--from`` and the messages call it (``'basicsr'``).
        source: who writes it, for messages (``"BasicSR's EDSR (basicsr/archs/edsr_arch.py)"``).
        signature: a key only this layout has, by which a checkpoint in it is recognised; ``''``
            when its weights cannot be told from ours (then it is read only on request:
            ``convert.py --from NAME``).
        to_ours: ``to_ours(state, rgb_range)``: its state_dict in our key names. ``rgb_range`` is
            the value the mean shift is built for when the layout keeps it out of the weights
            (``mean_outside``).
        from_ours: ``from_ours(state, options)``: ours in its key names (``options`` as detected);
            raises :class:`UnknownCheckpoint` for a configuration it cannot hold. None: not written.
        mean_outside: its network subtracts the DIV2K mean and scales by ``img_range`` outside the
            ``state_dict``, so ``rgb_range`` cannot be read from its weights: 255 (its default) is assumed.
        load_there: how the other code base builds the network for ``options`` (printed by convert.py).
    """

    name: str
    source: str
    signature: str
    to_ours: Callable[[StateDict, float], dict[str, torch.Tensor]]
    from_ours: Callable[[StateDict, Mapping[str, Any]], dict[str, torch.Tensor]] | None = None
    mean_outside: bool = False
    load_there: Callable[[Mapping[str, Any]], str] | None = None


@dataclass(frozen=True)
class ModelFlag:
    """A model option, ``--<name>`` on the command line.

    Several architectures may declare the same flag (``--n_feats``); they must agree on its type.

    Attributes:
        name: the option name (``n_feats``), also the keyword of the network's constructor.
        type: ``int``, ``float`` or ``str``.
        help: what it means for this architecture.
        positive: a value must be > 0 (ints default to this).
        choices: the allowed values of a ``str`` flag, matched in any letter case and stored as written here.
        changes_output: False for a flag that only chooses how the same function is computed (an
            implementation); such a flag is never reported as assumed when reading a checkpoint.
    """

    name: str
    type: type
    help: str
    positive: bool | None = None
    choices: tuple[str, ...] = ()
    changes_output: bool = True

    @property
    def must_be_positive(self) -> bool:
        return self.type is int if self.positive is None else self.positive


@dataclass(frozen=True)
class Architecture:
    """Everything about one architecture that the rest of the code needs.

    Attributes:
        name: ``--model`` value (matched in any letter case) and the name in messages.
        description: one line for ``--help``.
        make_model: builds the network from its options (:meth:`options`, or the parsed command line):
            ``args.scale[0]``, ``args.n_colors``, ``args.rgb_range`` and the architecture's own flags.
        flags: the model options it reads, with their meaning.
        defaults: the published value of every flag in ``flags``: what a flag not given takes.
        configurations: its other published configurations by name (``'paper'``), each the flags that
            differ from ``defaults`` or that the publication states; ``--template`` names them.
        scales: the scales its upsampler supports.
        demo: a small configuration that learns something in the two-minute demo (``--template demo``).
        tiny: the smallest configuration that exercises every part (tests).
        local: its output depends only on a bounded LR neighbourhood (no attention, no global pooling),
            so tiled inference with the receptive field as halo is exact.
        check: option checks across its flags beyond type, sign and choices; raises :func:`bad_flag`'s error.
        signature: a state_dict key only this architecture has (checked first when detecting).
        key_pattern: a regular expression every one of its state_dict keys matches (indices generalised).
        read_options: the options a state_dict of it records in its shapes (``scale`` and ``n_colors``
            among them); may raise :class:`UnknownCheckpoint`.
        shapes: key -> shape of its state_dict, built with ``**options`` (those of ``read_options``
            plus its flags); detection accepts a state_dict only when this rebuilds it exactly.
        assume: published values that depend on the options read from the weights (EDSR's residual
            scaling differs between its two published sizes); every other flag the weights do not
            record is assumed to have its default. It may give ``rgb_range``, the range that weights
            without a mean shift run on (SwinIR's: 1; otherwise EDSR-PyTorch's 255 is assumed).
        layouts: other code bases' key names for this network (:class:`Layout`), read and written
            through renaming (BasicSR's EDSR and RCAN).
    """

    name: str
    description: str
    make_model: Callable[[Namespace], nn.Module]
    flags: tuple[ModelFlag, ...]
    defaults: Mapping[str, Any]
    scales: tuple[int, ...]
    demo: Mapping[str, Any]
    tiny: Mapping[str, Any]
    local: bool
    signature: str
    key_pattern: str
    read_options: Callable[[StateDict], dict[str, Any]]
    shapes: Callable[..., Shapes]
    check: Callable[[Namespace], None] | None = None
    assume: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    layouts: tuple[Layout, ...] = ()
    configurations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.flags]
        named = [(f'configuration {name!r}', config) for name, config in self.configurations.items()]
        for what, config in (('defaults', self.defaults), ('demo', self.demo), ('tiny', self.tiny), *named):
            unknown = set(config) - set(names)
            if unknown:
                raise ValueError(f'{self.name}: {what} sets {sorted(unknown)}, which are not among its flags')
        if set(self.defaults) != set(names):
            raise ValueError(f'{self.name}: defaults must give every flag a value; missing '
                             f'{sorted(set(names) - set(self.defaults))}')
        object.__setattr__(self, '_key_re', re.compile(self.key_pattern, re.VERBOSE))

    def knows_key(self, key: str) -> bool:
        """Whether ``key`` is one of the state_dict keys this architecture uses."""
        return self._key_re.fullmatch(key) is not None

    def build(self, **options) -> nn.Module:
        """The network for ``options`` (see :meth:`options`), carrying them as ``net.sr_args``."""
        values = self.options(**options)
        net = self.make_model(values)
        net.sr_args = values
        return net

    def options(self, *, scale: int | str | list[int], n_colors: int = N_COLORS, rgb_range: float = RGB_RANGE,
                **flags) -> Namespace:
        """The checked options of a network of this architecture, as ``make_model`` reads them.

        Args:
            scale: its upscaling factor (``2``, or as the flag gives it: ``'2'``, ``[2]``); stored as ``[2]``.
            n_colors: 1 (Y channel) or 3 (RGB).
            rgb_range: pixel values are in [0, rgb_range].
            **flags: its flags by name (``n_feats=64``); those not given take their published value
                (``defaults``). A list-valued flag may be a list or its string (``depths=[6, 6]``, ``'6+6'``).

        Raises:
            TypeError: an option this architecture does not have, named.
            UserError: a bad value, in the words of its command-line flag (``--n_feats 0: ...``).
        """
        for name in flags:
            if name not in self.defaults:
                raise TypeError(f'{self.name}: unknown option {name!r}; its options are scale, n_colors, rgb_range, '
                                + ', '.join(self.defaults))
        given = {name: '+'.join(map(str, value)) if isinstance(value, list | tuple) else value
                 for name, value in flags.items()}
        values = Namespace(model=self.name, scale=self.scale_list(scale), n_colors=n_colors, rgb_range=rgb_range,
                           **{**self.defaults, **given})
        for flag in self.flags:
            value = getattr(values, flag.name)
            if flag.type is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(values, flag.name, float(value))  # as the parser's float flag holds it
            elif not isinstance(value, flag.type) or isinstance(value, bool):
                raise bad_flag(flag.name, value, _TYPE_NAMES[flag.type])
        self.check_options(values)
        return values

    def scale_list(self, scale: int | str | list[int]) -> list[int]:
        """``--scale`` (``'2'``, ``2`` or ``[2]``) as the list of its one scale; UserError unless this architecture
        upsamples by it."""
        text = '+'.join(map(str, scale)) if isinstance(scale, list | tuple) else str(scale)
        try:
            scales = [int(s) for s in text.split('+')]
        except ValueError:
            raise bad_flag('scale', text, f'"+"-separated integers from {self.scales}') from None
        if any(s not in self.scales for s in scales):
            raise bad_flag('scale', '+'.join(map(str, scales)), f'{self.name} upsamples by '
                           + ', '.join(map(str, self.scales)))
        if len(scales) != 1:
            raise bad_flag('scale', '+'.join(map(str, scales)), f'{self.name} has one upsampler: give a single scale')
        return scales

    def check_options(self, options: Namespace) -> None:
        """Check the network options in ``options`` (``n_colors``, ``rgb_range`` and this architecture's flags):
        finite, sign, choices (written back as declared), then :attr:`check`; raises :func:`bad_flag`'s error."""
        for flag in self.flags:
            value = getattr(options, flag.name)
            check_finite(flag.name, value)
            if flag.must_be_positive and not value > 0:
                raise bad_flag(flag.name, value, 'must be a positive integer' if flag.type is int else 'must be > 0')
            if flag.choices:
                canonical = {c.lower(): c for c in flag.choices}.get(str(value).lower())
                if canonical is None:
                    raise bad_flag(flag.name, value, f'allowed: {", ".join(flag.choices)}')
                setattr(options, flag.name, canonical)
        if self.check is not None:
            self.check(options)
        check_finite('rgb_range', options.rgb_range)
        if not options.rgb_range > 0:
            raise bad_flag('rgb_range', options.rgb_range, 'must be a positive integer')
        if options.n_colors not in (1, 3):
            raise bad_flag('n_colors', options.n_colors, 'allowed: 1 (Y channel) or 3 (RGB)')

    def no_such_option(self, flag: str, value) -> UserError:
        """The error for another architecture's flag given to this one."""
        return bad_flag(flag, value, f'{self.name} has no such option; its model options are '
                        + ', '.join(f'--{f}' for f in self.defaults))

    def assumed(self, read: Mapping[str, Any]) -> dict[str, Any]:
        """The values of the flags that the weights (read as ``read``) do not record: published ones."""
        values = {f.name: self.defaults[f.name] for f in self.flags if f.changes_output and f.name not in read}
        if self.assume is not None:
            values.update(self.assume(read))
        return values


# Flags of the EDSR family that mean the same in every architecture that has them.
N_FEATS = ModelFlag('n_feats', int, 'feature channels')
N_RESGROUPS = ModelFlag('n_resgroups', int, 'residual groups')
RES_SCALE = ModelFlag('res_scale', float, 'scale of the residual branches', positive=True)


def bad_flag(flag: str, value, allowed: str) -> UserError:
    """The one-line error for a bad option value: ``--flag 'value': allowed``."""
    return UserError(f'--{flag} {value!r}: {allowed}')


_TYPE_NAMES = {int: 'must be an integer', float: 'must be a number', str: 'must be a string'}


def check_finite(flag: str, value) -> None:
    """A float option must be a finite number (``--lr nan`` is refused)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_flag(flag, value, 'must be a finite number')


# -- state_dict layouts of the EDSR family (EDSR-PyTorch's module names)

def conv(prefix: str, c_out: int, c_in: int, k: int) -> Shapes:
    """A convolution with bias: ``prefix.weight`` and ``prefix.bias``."""
    return {prefix + 'weight': (c_out, c_in, k, k), prefix + 'bias': (c_out,)}


def mean_shifts(n_colors: int) -> Shapes:
    return {**conv('sub_mean.', n_colors, n_colors, 1), **conv('add_mean.', n_colors, n_colors, 1)}


def upsampler(prefix: str, scale: int, n_feats: int) -> Shapes:
    """EDSR-PyTorch's ``Upsampler``: conv to 4x channels + PixelShuffle(2) per factor 2, or one 9x stage for 3."""
    if scale == 3:
        return conv(prefix + '0.', 9 * n_feats, n_feats, 3)
    out: Shapes = {}
    for i in range(int(math.log2(scale))):
        out.update(conv(f'{prefix}{2 * i}.', 4 * n_feats, n_feats, 3))
    return out


def resblock(prefix: str, n_feats: int) -> Shapes:
    """``common.ResBlock``: its two convolutions ``body.0`` and ``body.2``."""
    return {**conv(prefix + 'body.0.', n_feats, n_feats, 3), **conv(prefix + 'body.2.', n_feats, n_feats, 3)}


def edsr_like(*, scale: int, n_colors: int, n_feats: int, body: Shapes) -> Shapes:
    """mean shifts, ``head.0``, ``body``, the upsampler ``tail.0`` and the output conv ``tail.1``."""
    return {**mean_shifts(n_colors), **conv('head.0.', n_feats, n_colors, 3), **body,
            **upsampler('tail.0.', scale, n_feats), **conv('tail.1.', n_colors, n_feats, 3)}


# Key names of the parts above, for ``Architecture.key_pattern``.
EDSR_LIKE_KEYS = r'''(sub|add)_mean\.(weight|bias) | head\.0\.(weight|bias)
                   | tail\.0\.\d+\.(weight|bias) | tail\.1\.(weight|bias)'''


# -- reading options off a state_dict

def shape(state: StateDict, key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def count(state: StateDict, pattern: str) -> int:
    """How many consecutive indices ``i`` from 0 have a key matching ``pattern.format(i=i)``."""
    n = 0
    while pattern.format(i=n) in state:
        n += 1
    return n


def ratio(whole: int, part: int) -> int:
    """``whole // part`` when it divides evenly, else 0 (an option that cannot be read)."""
    return whole // part if part and whole % part == 0 else 0


def upsampler_scale(state: StateDict, prefix: str = 'tail.0.') -> int | None:
    """The scale of the upsampler in ``state``: the product over its conv + PixelShuffle(r) stages.

    The convolutions under ``prefix`` are taken in natural order (``2`` before ``10``); each feeds a
    PixelShuffle(r), so its output channels are ``r*r`` times the input channels of the next one. The last
    one feeds the first convolution after the upsampler, or is that convolution itself (RDN's output conv
    sits inside its ``UPNet``). That convolution is the first after them in state_dict order; a file whose
    keys are sorted as text (safetensors) may list it before them, so the last stage's own input width
    (EDSR's ``Upsampler`` keeps the width it is given) stands in when no convolution after it fits.
    ``None`` when the keys do not look like that.
    """
    keys = list(state)
    in_prefix = [k for k in keys if k.startswith(prefix) and k.endswith('.weight') and state[k].dim() == 4]
    if not in_prefix:
        return None
    chain = [state[k] for k in natural_order({k: state[k] for k in in_prefix})]
    last = max(keys.index(k) for k in in_prefix)
    after = [state[k] for k in keys[last + 1:] if k.endswith('.weight') and state[k].dim() == 4]

    def root(out_ch: int, in_ch: int) -> int:
        r = math.isqrt(out_ch // in_ch) if out_ch % in_ch == 0 else 0
        return r if r >= 2 and r * r * in_ch == out_ch else 0

    scale = 1
    for w, following in zip(chain, chain[1:], strict=False):
        r = root(w.shape[0], following.shape[1])
        if not r:
            return None
        scale *= r
    r = next((r for r in (root(chain[-1].shape[0], w.shape[1]) for w in [*after[:1], chain[-1]]) if r), 0)
    scale *= max(r, 1)
    return scale if scale > 1 else None


Rules = list[tuple[str, 'str | Callable[[re.Match], str] | None']]


def renamed(state: StateDict, rules: Rules) -> dict[str, torch.Tensor]:
    """``state`` with each key rewritten by the first ``(regex, replacement)`` of ``rules`` that matches it whole.

    A replacement is a template (``match.expand``) or a function of the match; None drops the key; a key
    no rule matches is kept as it is (detection then names it). The order of the keys is kept.
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, replacement in compiled:
            match = pattern.fullmatch(key)
            if match:
                if replacement is not None:
                    out[replacement(match) if callable(replacement) else match.expand(replacement)] = value
                break
        else:
            out[key] = value
    return out


def natural_order(state: StateDict) -> dict[str, torch.Tensor]:
    """``state`` with its keys sorted part by part, numbers as numbers (``body.2`` before ``body.10``).

    Our layouts read right in this order (the upsampler ``tail.0.*`` before the ``tail.1`` after it),
    whatever order a file gave (safetensors sorts keys as text).
    """
    def key(name: str) -> tuple:
        return tuple((0, int(part), '') if part.isdigit() else (1, 0, part) for part in name.split('.'))
    return {k: state[k] for k in sorted(state, key=key)}


# BasicSR's names for the parts of the EDSR family outside the body (basicsr/archs/edsr_arch.py,
# rcan_arch.py): ``conv_first``, ``conv_after_body`` (our last body convolution, ``body.<n>``),
# ``upsample`` (the same conv + PixelShuffle stack) and ``conv_last``. It keeps the mean shift out
# of the state_dict (``img_range`` and ``rgb_mean`` are constructor arguments).
def basicsr_to_ours(n_body: int) -> Rules:
    """Rules for :func:`renamed` from BasicSR's outer EDSR-family names to ours, the body having ``n_body`` blocks."""
    return [(r'conv_first\.(.+)', r'head.0.\1'), (r'conv_after_body\.(.+)', rf'body.{n_body}.\1'),
            (r'upsample\.(.+)', r'tail.0.\1'), (r'conv_last\.(.+)', r'tail.1.\1')]


def ours_to_basicsr(n_body: int) -> Rules:
    """The inverse of :func:`basicsr_to_ours`; our mean shift is dropped (BasicSR applies its own)."""
    return [(r'(sub|add)_mean\..+', None), (r'head\.0\.(.+)', r'conv_first.\1'),
            (rf'body\.{n_body}\.(.+)', r'conv_after_body.\1'), (r'tail\.0\.(.+)', r'upsample.\1'),
            (r'tail\.1\.(.+)', r'conv_last.\1')]


def with_mean_shift(state: StateDict, rgb_range: float) -> dict[str, torch.Tensor]:
    """``state`` (3 colours) preceded by EDSR's DIV2K mean shift for ``rgb_range``, as ``common.MeanShift`` holds it."""
    mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float32) * rgb_range
    eye = torch.eye(3).view(3, 3, 1, 1)
    return {'sub_mean.weight': eye, 'sub_mean.bias': -mean, 'add_mean.weight': eye.clone(), 'add_mean.bias': mean,
            **state}


def rgb_range_of(state: StateDict) -> float | None:
    """``rgb_range`` from ``add_mean.bias = rgb_range * DIV2K mean`` (None when the bias is not of that form).

    The bias is compared in its own precision: a checkpoint saved in float16 or bfloat16 holds the
    mean rounded to 11 or 8 significant bits.
    """
    bias, weight = state.get('add_mean.bias'), state.get('add_mean.weight')
    if bias is None or bias.dim() != 1 or bias.numel() not in (1, 3) or not bias.is_floating_point():
        return None
    mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float64)
    if bias.numel() == 1:
        mean = mean.mean().reshape(1)
    gain = 1.0  # a layout run on [0, 1] images scales by rgb_range in add_mean's weight (unit_range)
    if weight is not None and weight.shape == (bias.numel(), bias.numel(), 1, 1):
        diagonal = float(weight.double().flatten(1).diagonal().mean())
        gain = diagonal if diagonal > 0 else 1.0
    value = float(bias.double().sum() / mean.sum() / gain)
    rtol = max(1e-4, 2 * torch.finfo(bias.dtype).eps)
    if not math.isfinite(value) or value <= 0 or not torch.allclose(bias.double(), gain * value * mean, rtol=rtol):
        return None
    return int(round(value)) if abs(value - round(value)) < max(1e-3, rtol) * max(1.0, value) else value


def unit_range(state: StateDict, rgb_range: float, *, applies_mean: bool) -> dict[str, torch.Tensor]:
    """``state`` of a network run on [0, 1] images (super-image's) as ours, run on [0, ``rgb_range``] images.

    ``sub_mean`` divides by ``rgb_range`` and ``add_mean`` multiplies by it, so our network computes
    its function exactly. ``applies_mean``: its forward applies the mean shift it holds (kept);
    else the shift is dropped (only the rescaling is left).
    """
    out = dict(state)
    for key, factor in (('sub_mean.', 1 / rgb_range), ('add_mean.', rgb_range)):
        weight, bias = state[key + 'weight'].float(), state[key + 'bias'].float()
        if not applies_mean:
            weight, bias = torch.eye(weight.shape[0]).view_as(weight), torch.zeros_like(bias)
        out[key + 'weight'] = weight * factor
        out[key + 'bias'] = bias * rgb_range if key == 'add_mean.' else bias
    return out


def mismatch(why: str) -> UnknownCheckpoint:
    return UnknownCheckpoint(f'not a checkpoint of a model this program can build: {why}')


def edsr_like_options(state: StateDict) -> dict[str, int]:
    """``scale``, ``n_colors`` and ``n_feats`` of an EDSR-like state_dict (head and upsampler)."""
    n_feats, n_colors = shape(state, 'head.0.weight')[:2]
    scale = upsampler_scale(state)
    if scale is None:
        raise mismatch('its upsampler (tail.0.*) is not a conv + PixelShuffle stack')
    return dict(scale=scale, n_colors=n_colors, n_feats=n_feats)
