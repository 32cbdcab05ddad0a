"""Python API: a checkpoint in, a network out; a numpy image in, its super-resolved version out.

    import sys; sys.path.insert(0, 'src')
    from api import load_pretrained, upscale
    net = load_pretrained('LCoAN_x4.pt')            # architecture and options read from the weights
    print(net.sr_options)                           # ... the rest from its run's config.txt, or published
    sr = upscale(net, imageio.v3.imread('in.png'))  # uint8/uint16 HWC (or HW) in, same type out

Gray images run through an RGB network as three equal channels (the output is their mean); an RGB
image through a 1-channel network runs on its Y channel, Cb and Cr are upscaled bicubically. An
alpha channel is upscaled bicubically and put back.
"""

import ast
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import option
from core import distributed, rng
from core.errors import UserError
from model import checkpoint_io, detect, inference, registry
from training import run_flags

# ITU-R BT.601 as MATLAB's rgb2ycbcr, on [0, 1] values: rows give Y, Cb, Cr.
_YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255


# -- the options of a checkpoint: the weights, the run's config.txt, flags, published values

# The file training.run_folder writes into a run folder: per run a time, ``command: ...``, a blank line, then one
# ``key: value`` line per option.
RUN_CONFIG = 'config.txt'
# upscale.py and load_pretrained's default seed for networks that draw random numbers (NLSN's hashing): main.py's.
DEFAULT_SEED = 1


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The options of the network in a checkpoint that its weights do not record, and where each comes from.

    Attributes:
        detected: what the weights record (``model.detect``), with the published values of the rest.
        from_config: options read from ``config``, the config.txt of the run that saved the weights.
        assumed: options that neither the flags nor config.txt give: the published values.
        config: the run's config.txt, when one lies beside the weights (or above their ``model/`` folder).
        note: why config.txt was not used, or ''.
        seed: the run's ``--seed``, from its config.txt; None without one.
    """

    detected: detect.Detected
    from_config: dict[str, Any]
    assumed: dict[str, Any]
    config: Path | None = None
    note: str = ''
    seed: int | None = None

    def describe(self, prefix: str, read: Mapping[str, Any], given: str = '') -> str:
        """One line: ``<prefix>: LCoAN x2 checkpoint; options read from the weights: ...; from <config>: ...;
        assumed (not stored in the weights): ...; <given>``."""
        d = self.detected
        parts = [f'{prefix}: {d.model} x{d.scale} checkpoint',
                 'options read from the weights: ' + _listing(read) if read else 'no options filled from the weights']
        if self.from_config:
            parts.append(f'from {self.config}: {_listing(self.from_config)}')
        if self.note:
            parts.append(self.note)
        if self.assumed:
            parts.append('assumed (not stored in the weights): ' + _listing(self.assumed))
        if given:
            parts.append(given)
        return '; '.join(parts) + '.'


def _listing(values: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v}' for k, v in values.items())


def run_config_path(weights: str | Path) -> Path | None:
    """The config.txt of the run that saved ``weights``: beside it, or above it in ``<run>/model/``."""
    weights = Path(weights)
    folders = [weights.parent] + ([weights.parent.parent] if weights.parent.name == 'model' else [])
    return next((f / RUN_CONFIG for f in folders if (f / RUN_CONFIG).is_file()), None)


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The options of the last run recorded in a config.txt, as Python values where they read as one (``[2]``,
    ``0.1``, ``None``), else as text; empty for no run. ``training.run_folder`` appends one block per run (a
    time, ``command: ...``, ``key: value`` lines); the official EDSR code writes blocks of a time and the
    ``key: value`` lines, which are read the same way. ``'_truncated'`` is set when the last block of ours
    lacks its options (a file cut short)."""
    lines = Path(path).read_text(errors='replace').splitlines()
    ours = any(line.startswith('command: ') for line in lines)
    blocks: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith('command: ') or (not ours and line.strip() and ': ' not in line):
            blocks.append({})  # ours: the command line starts a block; the official code's: its time
        elif ': ' in line and (blocks or not ours):
            if not blocks:
                blocks.append({})
            key, text = line.split(': ', 1)
            try:
                blocks[-1][key] = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                blocks[-1][key] = text
    last = blocks[-1] if blocks else {}
    if ours and 'model' not in last:
        last['_truncated'] = True
    return last


def _same(theirs: Any, ours: Any) -> bool:
    if isinstance(theirs, list) and len(theirs) == 1:  # config.txt's scale: [2]
        theirs = theirs[0]
    if isinstance(ours, str) or isinstance(theirs, str):
        return str(theirs).lower() == str(ours).lower()
    try:
        return float(theirs) == float(ours)
    except (TypeError, ValueError):
        return False


def _as_type_of(value: Any, like: Any) -> Any:
    """``value`` as the type of the published value ``like``; ValueError if it is not one."""
    if isinstance(like, str) and isinstance(value, str):
        return value
    if isinstance(like, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(like, int) and value != int(value):
            raise ValueError(value)
        return type(like)(value)
    raise ValueError(value)


def _from_run_config(config: Path, detected: detect.Detected) -> tuple[dict[str, Any], str]:
    """The options ``config`` gives that the weights do not record, if it describes the network of ``detected``;
    else ``({}, why not)``. A value that is no value of its option is left out, and the note says so."""
    try:
        run = read_run_config(config)
    except OSError as e:
        return {}, f'{config} not read ({e.strerror or e})'
    if run.get('_truncated'):
        return {}, f'{config} not used: the options of its last run are missing (the file was cut short?)'
    model = run.get('model')
    if not run or not isinstance(model, str):
        return {}, ''  # not a run's config.txt
    if model.lower() != detected.model.lower():
        return {}, f'{config} not used: it is a run of {model}, the weights are {detected.model}\'s'
    for key, value in detected.options.items():
        if run.get(key) is not None and not _same(run[key], value):
            return {}, f'{config} not used: its {key} is {run[key]}, the weights\' {value}'
    values, bad = {}, []
    positive = {f.name for f in registry.get(detected.model).flags if f.must_be_positive} | {'rgb_range'}
    for key, published in detected.assumed.items():
        if run.get(key) is not None:
            try:
                values[key] = _as_type_of(run[key], published)
                if key in positive and not values[key] > 0:
                    raise ValueError(run[key])
            except ValueError:
                values.pop(key, None)
                bad.append(f'{key}: {run[key]}')
    if isinstance(run.get('seed'), int) and not isinstance(run['seed'], bool):
        values['seed'] = run['seed']
    note = f'{config}: not used: ' + ', '.join(bad) + ' (not a value of the option)' if bad else ''
    return values, note


def resolve(weights: str | Path, detected: detect.Detected, given: Iterable[str] = ()) -> Resolved:
    """Where the options of ``weights`` that the weights do not record come from: ``given`` (flags; not in the
    result), else the run's config.txt beside the weights when it describes this network, else the published
    values (``detected.assumed``)."""
    given = set(given)
    open_ = {k: v for k, v in detected.assumed.items() if k not in given}
    config = run_config_path(weights)
    values, note = _from_run_config(config, detected) if config is not None else ({}, '')
    from_config = {k: values[k] for k in open_ if k in values}
    assumed = {k: v for k, v in open_.items() if k not in from_config}
    return Resolved(detected, from_config, assumed, config, note, values.get('seed'))


def add_model_flags(parser) -> None:
    """The options that change a network's output, as flags (``upscale.py``, ``export.py``): every model flag of
    the registry and ``--rgb_range``; the values given override the checkpoint's (see :func:`model_overrides`)."""
    group = parser.add_argument_group(
        'options the weights may not record',
        'Default: from the config.txt of the run that saved the weights (beside them, or above their model/ '
        'folder), else the published value; the first line printed says which value came from where.')
    group.add_argument('--rgb_range', type=int, help='pixel values the network works on: [0, rgb_range]')
    for name, users in registry.model_flags().items():
        used = [(arch, flag) for arch, flag in users if flag.changes_output]
        if used:
            group.add_argument(f'--{name}', type=used[0][1].type,
                               help='; '.join(f'{arch.name}: {flag.help}' for arch, flag in used))


def model_overrides(args) -> dict[str, Any]:
    """The flags of :func:`add_model_flags` given in ``args``, for :func:`load_pretrained`."""
    flags = registry.model_flags().items()
    names = ['rgb_range'] + [name for name, users in flags if any(flag.changes_output for _, flag in users)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _apply_weights(args, flag: str, path: str | Path | None = None, *, recorded_range: bool = False) -> str:
    """``--pre_train X.pt`` with architecture flags left out: fill them from the checkpoint (and its run's
    config.txt). Flags in ``args.given`` (command line or ``--template``) win; a contradiction then surfaces as
    the loader's mismatch error, except a given ``--model`` other than the checkpoint's, which is named as
    such. ``path``: another checkpoint than ``--pre_train``, named in messages by ``flag``. Returns the log
    line (empty without weights to read)."""
    path = args.pre_train if path is None else path
    if not path or path == '.' or not Path(path).exists():
        return ''  # nothing to read: a missing file is reported by the loader, naming it
    given_range = args.rgb_range if 'rgb_range' in args.given else None
    _, detected = detect.read_checkpoint(path, what=flag, rgb_range=given_range)
    if 'model' in args.given and str(args.model).lower() != detected.model.lower():
        template = getattr(args, 'template', None)
        by = f' (--model or --template {template})' if template not in (None, '.') else ''
        raise detect.UnknownCheckpoint(
            f'{flag} {path}: a checkpoint of {detected.model} x{detected.scale}, but the model is {args.model}{by}; '
            f'give --model {detected.model}, or leave out --model and --template to take the architecture from '
            'the weights')
    if recorded_range and given_range is not None and not _same(given_range, detected.options.get('rgb_range',
                                                                                                 given_range)):
        raise UserError(f'{flag} rgb_range {given_range}, but {path} records rgb_range='
                        f'{detected.options["rgb_range"]} (in its mean shift); give --rgb_range '
                        f'{detected.options["rgb_range"]}')
    resolved = resolve(path, detected, args.given)
    filled, _ = detect.fill_options(args, dataclasses.replace(detected, assumed={}), args.given)
    for key, value in {**resolved.from_config, **resolved.assumed}.items():
        setattr(args, key, value)
    kept = sorted(({'model'} | set(detected.options)) & set(args.given))
    notes = ['as given (flags or --template): ' + ', '.join(kept)] if kept else []
    if detected.layout:
        notes.append(f'in the layout of {detected.layout}, renamed to ours')
    return resolved.describe(f'{flag} {path}', filled, '; '.join(notes))


def parse_args(argv=None, *, weights_flag: str = '--pre_train'):
    """``main.py``'s options from the command line ``argv``: parsed, the model options not given read from
    a ``--pre_train`` checkpoint (or the network ``--load <run> --test_only`` evaluates) and its run's config.txt
    (``args.pre_train_detected`` says what was read from where), checked, and on a device (CUDA unless ``--cpu``
    or there is none; ``args.device_note`` says when CUDA was missing). ``weights_flag`` names the checkpoint in
    messages (``visualize.py``: ``--weights``)."""
    args = option.parse(argv)
    config, taken = _take_run_options(args)
    resumed = run_flags.resumed_run(args)
    weights = run_flags.evaluated_weights(args)  # --load <run> --test_only: the run's network file
    if resumed is not None:
        flag = f'--load {args.load} --resume {args.resume}:'
        lines = [f'{flag} the options not given are the run\'s, from {config}'] if taken else []
        lines.append(_apply_weights(args, flag, run_flags.run_weights(resumed, args.resume), recorded_range=True))
        args.pre_train_detected = '\n'.join(line for line in lines if line)
    elif weights:
        args.pre_train_detected = _apply_weights(args, f'--load {args.load} --test_only:', weights,
                                                 recorded_range=True)
    else:
        args.pre_train_detected = _apply_weights(args, weights_flag)
    try:
        option.finalize(args)
    except UserError as e:  # a value from config.txt is named there, not as a flag the user did not give
        key = next((k for k in taken if str(e).startswith(f'--{k} ')), None)
        if key is None:
            raise
        raise UserError(f'{config}: {key} {str(e)[len(key) + 3:]} (the run\'s value; correct it there or give '
                        f'--{key})') from None
    args.device_note = distributed.select_device(args)
    return args


def _take_run_options(args) -> tuple[Path | None, set[str]]:
    """``--load RUN --resume N``: every option not given now (but those of :data:`option.NOT_RESUMED`) takes
    the value the run's config.txt records for its last start, as if given. Returns the config.txt and the
    options taken (none for other flags, or a run without a config.txt, which the run folder reports)."""
    run = run_flags.resumed_run(args)
    config = None if run is None else run / RUN_CONFIG
    if config is None or not config.is_file():
        return None, set()
    try:
        recorded = read_run_config(config)
    except OSError as e:
        raise UserError(f'{config}: cannot read it ({e.strerror or e})') from None
    if recorded.pop('_truncated', False):
        raise UserError(f'{config}: the options of the run\'s last start are missing (the file was cut short?); '
                        'delete that incomplete last block to resume with the ones before it')
    dests = {a.dest for a in option.build_parser()._actions}
    taken = set()
    for key, value in recorded.items():
        if key not in dests or key in option.NOT_RESUMED or key in args.given or value is None:
            continue
        try:
            setattr(args, key, option.as_flag_value(key, value))
        except ValueError as e:
            raise UserError(f'{config}: {key}: {value!r} is not {e} (the run\'s value; correct it there or give '
                            f'--{key})') from None
        taken.add(key)
    args.given |= taken
    return config, taken


def load_pretrained(path: str | Path, *, device: str | torch.device | None = None, layout: str | None = None,
                    **overrides) -> nn.Module:
    """The network stored in ``path``, in eval mode on ``device`` (default: the GPU if there is one).

    Architecture and options are detected from the weights (``model.detect``); the options they do not record
    (``window_size``, ``res_scale``, ``rgb_range`` without a mean shift ...) come from ``overrides``, else
    from the config.txt of the run that saved them (beside the file, or above its ``model/`` folder), else
    the published values. ``overrides`` set options by their flag name (``window_size=96``,
    ``attention_impl='reference'``), as on the command line. A checkpoint is loaded only when it fits exactly
    (no fresh upsampler). ``layout`` reads the file as another code base's layout that its weights do not
    reveal (``'super-image'``); the recognisable ones (BasicSR's) are read without it.

    The returned network carries ``net.sr_args`` (the resolved options: ``model, scale, n_colors,
    rgb_range`` ...) for :func:`upscale`, ``net.sr_detected`` (what the weights record),
    ``net.sr_options`` (one line: which value came from where) and ``net.sr_seed`` (the ``--seed`` of the run
    that saved the weights, which its evaluation drew a random network's numbers after; else main.py's default).

    Raises:
        UserError: missing or unreadable file, unknown checkpoint, an override that contradicts it.
        TypeError: an override that is no option.
    """
    path = Path(path)
    state, detected = read_checkpoint(path, what='weights', layout=layout, rgb_range=overrides.get('rgb_range'))
    return build(state, detected, weights=path, device=device, **overrides)


def read_checkpoint(path: str | Path, *, what: str, layout: str | None = None,
                    rgb_range: float | None = None) -> tuple[dict[str, Tensor], detect.Detected]:
    """:func:`detect.read_checkpoint`; a layout that keeps the mean shift out of its weights (BasicSR's) gets
    ``rgb_range`` (a flag), else the run's config.txt's, else the default."""
    state, detected = detect.read_checkpoint(path, what=what, rgb_range=rgb_range, layout=layout)
    if rgb_range is None and detected.layout and 'rgb_range' in detected.assumed:
        run_range = resolve(path, detected).from_config.get('rgb_range')
        if run_range is not None and run_range != detected.assumed['rgb_range']:
            state, detected = detect.read_checkpoint(path, what=what, rgb_range=run_range, layout=layout)
    return state, detected


def build(state: dict[str, Tensor], detected: detect.Detected, *, weights: str | Path, what: str = 'weights',
          device: str | torch.device | None = None, **overrides) -> nn.Module:
    """The network of ``detected`` holding ``state`` (in our layout), as :func:`load_pretrained` returns it.

    ``weights`` is the file ``state`` was read from: messages name it (introduced by ``what``), and the
    config.txt of its run gives the options the weights do not record.
    """
    device = torch.device(device) if device is not None else torch.device('cuda' if torch.cuda.is_available()
                                                                            else 'cpu')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'device {device}: CUDA is not available')
    for key in ('pre_train', 'cpu', 'model'):
        if key in overrides:
            raise TypeError(f'load_pretrained: unknown option {key!r}')
    scale, rgb_range = overrides.get('scale'), overrides.get('rgb_range')
    if scale is not None and int(scale) != detected.scale:
        raise UserError(f'scale {scale} requested, but {what} {weights} is a x{detected.scale} {detected.model} '
                        'checkpoint')
    if rgb_range is not None and not _same(rgb_range, detected.options.get('rgb_range', rgb_range)):
        raise UserError(f'rgb_range {rgb_range} requested, but {what} {weights} records rgb_range='
                        f'{detected.options["rgb_range"]} (in its mean shift)')
    resolved = resolve(weights, detected, overrides)
    options = {**detected.options, **resolved.from_config, **resolved.assumed, **overrides}
    try:
        net = registry.build(detected.model, **options)
    except TypeError as e:
        raise TypeError(f'load_pretrained: {e}') from None
    checkpoint_io.load_into(net, state, source=f'{what} {weights}', log=lambda _: None, allow_new_upsampler=False)
    net.sr_detected = detected
    net.sr_seed = resolved.seed if resolved.seed is not None else DEFAULT_SEED
    net.sr_options = resolved.describe(str(weights), detected.options,
                                       'as given: ' + _listing(overrides) if overrides else '')
    return net.to(device).eval()


def make_forward(net: nn.Module, *, self_ensemble: bool = False, precision: str = 'single') -> inference.Forward:
    """The network as a function of an LR tensor: no gradients, ``precision`` autocast, optional x8 ensemble."""
    return inference.make_forward(net, precision=precision, ensemble=self_ensemble)


def choose_tile(net: nn.Module, forward: inference.Forward, n_colors: int, key: tuple = ()) -> int:
    """The automatic tile: the largest that fits half the free memory of the network's device.

    The network's memory per pixel is measured once per ``key`` (precision, ensemble) and cached on it.
    """
    device = next(net.parameters()).device
    cache = net.__dict__.setdefault('sr_bytes_per_pixel', {})
    if key not in cache:
        cache[key] = inference.peak_bytes_per_pixel(forward, n_colors, device)
    return inference.auto_tile(cache[key], inference.available_memory(device))


def fit_tiling(net: nn.Module, tile: int | None, halo: int | None) -> tuple[int | None, int]:
    """``(tile, halo)`` for ``net``: ``halo`` None is the model's default (:func:`inference.default_halo`, exact for
    convolutional models); a ``tile`` too small to keep a core inside that halo is raised to the smallest that
    does (:func:`inference.min_tile`), with one warning."""
    if halo is None:
        halo = inference.default_halo(net, registry.get(net.sr_args.model).local)[0]
    smallest = inference.min_tile(halo)
    if tile is not None and tile < smallest:
        warnings.warn(f'--tile {tile} is too small for a context of {halo} LR pixels on each side (--tile_halo): '
                      f'using --tile {smallest}, the smallest that keeps a core of {inference.MIN_CORE} pixels; '
                      'a smaller --tile_halo allows smaller tiles, with visible seams', stacklevel=2)
        tile = smallest
    return tile, halo


def super_resolve(net: nn.Module, lr: Tensor, *, tile: int | None = None, halo: int | None = None,
                  self_ensemble: bool = False, precision: str = 'single', progress: Callable | None = None,
                  seed: int | None = DEFAULT_SEED) -> Tensor:
    """SR of ``lr`` (1, n_colors, h, w) in [0, rgb_range] on the CPU; returns float32 on the CPU.

    ``tile`` None: automatic (:func:`choose_tile`); ``halo`` None: the model's default (see :func:`fit_tiling`).
    A network that draws random numbers (NLSN's hashing) draws them after ``seed`` (None: from the generators
    as they are), so its output does not change from run to run; the caller's generators are left as they were.
    """
    args = net.sr_args
    forward = make_forward(net, self_ensemble=self_ensemble, precision=precision)
    tile, halo = fit_tiling(net, tile, halo)
    if tile is None:
        auto = (choose_tile(net, forward, args.n_colors, (precision, self_ensemble))
                if max(lr.shape[-2:]) > inference.MIN_TILE else inference.MIN_TILE)
        tile = max(auto, inference.min_tile(halo))
    h, w = lr.shape[-2:]
    device = next(net.parameters()).device
    with rng.seeded(seed, device):
        return inference.tiled_forward(forward, lr, scale=args.scale[0], rows=inference.halo_spans(h, tile, halo),
                                       cols=inference.halo_spans(w, tile, halo), device=device, progress=progress)


def _bicubic(x: Tensor, scale: int) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)


def upscale(net: nn.Module, image: np.ndarray, *, tile: int | None = None, halo: int | None = None,
            self_ensemble: bool = False, precision: str = 'single', progress: Callable | None = None,
            seed: int | None = DEFAULT_SEED) -> np.ndarray:
    """Super-resolve a uint8 or uint16 image, HW (gray) or HWC with 1-4 channels; returns the same type and layout.

    An 8-bit RGB image through an RGB network gives the pixels of ``main.py --save_results``: the image goes in
    as the data loader feeds it (``x * rgb_range / 255``) and comes out rounded as the results are.

    Args:
        net: from :func:`load_pretrained`.
        image: gray (HW or HWx1), gray + alpha, RGB or RGBA.
        tile, halo: LR tile size and context (None: automatic, see :func:`super_resolve`).
        self_ensemble: average over the 8 flips/transposes.
        precision: 'single', 'half' or 'bf16' (autocast).
        progress: wraps the list of tiles (e.g. ``tqdm``) when the image is tiled.
        seed: the seed of a network that draws random numbers (see :func:`super_resolve`).
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f'upscale: expected a uint8 or uint16 image, got {image.dtype}')
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise TypeError(f'upscale: expected an HW or HWC image with 1-4 channels, got shape {image.shape}')
    args = net.sr_args
    scale, rgb_range = args.scale[0], float(args.rgb_range)
    peak = float(np.iinfo(image.dtype).max)
    hwc = image[:, :, None] if image.ndim == 2 else image
    channels = hwc.shape[2]

    def planes(x: np.ndarray, top: float) -> Tensor:  # (h, w, c) -> float32 (1, c, h, w) in [0, top], as data.common
        return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32, order='C'))[None].mul_(top).div_(peak)

    def run(x: Tensor) -> Tensor:  # [0, rgb_range] in and out
        return super_resolve(net, x, tile=tile, halo=halo, self_ensemble=self_ensemble, precision=precision,
                             progress=progress, seed=seed)

    colour = planes(hwc[:, :, :3 if channels >= 3 else 1], rgb_range)
    if colour.shape[1] == args.n_colors:
        sr = run(colour)
    elif args.n_colors == 3:  # gray through an RGB network
        sr = run(colour.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
    else:  # RGB through a Y network: Y super-resolved, Cb/Cr bicubic (in [0, 1])
        ycc = torch.einsum('ij,njhw->nihw', _YCBCR, colour / rgb_range) + _YCBCR_OFFSET.view(1, 3, 1, 1)
        ycc = torch.cat([run(ycc[:, :1] * rgb_range) / rgb_range, _bicubic(ycc[:, 1:], scale)], dim=1)
        sr = torch.einsum('ij,njhw->nihw', torch.linalg.inv(_YCBCR), ycc - _YCBCR_OFFSET.view(1, 3, 1, 1)) * rgb_range
    parts = [sr.mul_(peak / rgb_range).clamp_(0, peak).round_()]  # as metrics.quantize and the saved results
    if channels in (2, 4):  # alpha: bicubic
        parts.append(_bicubic(planes(hwc[:, :, -1:], 1.0), scale).mul_(peak).clamp_(0, peak).round_())
    out = torch.cat(parts, dim=1)[0].permute(1, 2, 0).numpy().astype(image.dtype)
    return out[:, :, 0] if image.ndim == 2 else out
