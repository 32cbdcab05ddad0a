"""Command-line options: one argparse parser, parsed on demand (never at import time).

``parse_args(argv)`` returns an ``argparse.Namespace`` whose list-valued flags are already split
(``--scale 2+3`` -> ``[2, 3]``, ``--decay 300-600`` -> ``[300, 600]``) and whose values have been
checked. A bad value raises :class:`core.errors.UserError` with one line naming the flag and what is
allowed; ``main.py`` prints it without a traceback. It is :func:`parse` (the command line and the
template) followed by :func:`finalize` (the checks). ``main.py`` starts from :func:`parse_main_args`,
which in between reads the options not given from the weights the run starts from (``--pre_train``,
or the run ``--load`` names, and that run's config.txt: :mod:`model.checkpoint`). Parsing probes no
hardware: ``args.device`` is what was asked for (``--cpu`` or CUDA), and
``core.distributed.select_device`` settles it.

Model flags come from the architectures (``model.registry``): each declares the flags it reads and
their published defaults, so a flag can mean different things per model (``--n_hashes`` is LCoAN's
k-means rounds, 1, and NLSN's LSH rounds, 4). Their parser default is ``None``; a flag given on the
command line or by ``--template`` wins, and :func:`fill_model_defaults` gives every other one of the
chosen model's flags its published value. ``args.given`` is the set of option names set on the
command line or by the template; a model flag the chosen model does not use is an error when given,
and ``None`` otherwise.
"""

import argparse
import math
import re
import sys
from pathlib import Path

import template
from core.errors import UserError
from core.precision import PRECISIONS
from data import TEST_SETS, TRAIN_SETS, trainsets
from model import checkpoint, registry
from model.checkpoint import run_config
from model.spec import N_COLORS, RGB_RANGE, bad_flag, check_finite
from training import run_flags

OPTIMIZERS = ('ADAM', 'SGD', 'RMSprop')
EXTS = ('img', 'sep', 'sep_reset')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` except for model flags, whose help lists the default of each model."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _model_flag_help(users) -> str:
    """The meaning of a model flag (per model where they differ) and each model's default."""
    meanings = list(dict.fromkeys(flag.help for _, flag in users))
    if len(meanings) == 1:
        meaning = meanings[0]
    else:
        meaning = '; '.join(f'{arch.name}: {flag.help}' for arch, flag in users)
    choices = users[0][1].choices
    if choices:
        meaning += f' ({"|".join(choices)})'
    defaults = ', '.join(f'{arch.name} {arch.defaults[flag.name]}' for arch, flag in users)
    return f'{meaning} (default per model: {defaults})'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Single-image super-resolution: ' + ', '.join(registry.names()),
        epilog='Model flags that are not given take the published default of the chosen --model (listed with '
               'each flag); a flag given on the command line always wins. config.txt records the values in force.'
               + (' ' + registry.broken_note() if registry.broken() else ''),
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add('--template', default=None,
        help=f'preset of options: {"|".join(template.TEMPLATES)}; flags given still win (default: none)')

    g = parser.add_argument_group('hardware').add_argument
    g('--n_threads', type=int, default=6, help='data-loading worker processes (0: load in the main process)')
    g('--cpu', action='store_true', help='run on the CPU even if a GPU is available')
    g('--n_GPUs', type=int, default=1, help='GPUs on this machine; more than 1 starts DistributedDataParallel')
    g('--seed', type=int, default=1, help='random seed')
    g('--deterministic', action='store_true',
      help='bit-identical runs for the same --seed on CUDA too: deterministic kernels (slower; the CPU always is)')
    g('--dist_timeout', type=int, default=600,
      help='seconds a process waits for the others in a collective before the run fails')

    g = parser.add_argument_group('data').add_argument
    g('--dir_data', type=str, default='../dataset',
      help='folder holding DIV2K/, benchmark/ and the training sets (<set>/HR or train/<set>/HR)')
    g('--dir_demo', type=str, default='../test', help='folder of images for --data_test Demo')
    g('--data_train', type=str, default='DIV2K', help=f'training set(s), "+"-separated: {"|".join(TRAIN_SETS)}')
    g('--dir_train', type=str, default=None, help='folder of HR images for --data_train Folder')
    g('--data_test', type=str, default='DIV2K', help=f'test set(s), "+"-separated: {"|".join(TEST_SETS)}')
    g('--data_range', type=str, default='1-800/801-810',
      help='DIV2K train/validation image index ranges; one range a-b serves both')
    g('--ext', type=str, default='sep', help=f'image storage: {"|".join(EXTS)} (sep: decoded .npy cache)')
    g('--scale', type=str, default='4', help='super-resolution scale(s), "+"-separated')
    g('--patch_size', type=int, default=192, help='HR training patch size (a multiple of the scale)')
    g('--rgb_range', type=int, default=RGB_RANGE, help='pixel values are scaled to [0, rgb_range]')
    g('--n_colors', type=int, default=N_COLORS, help='1 (Y channel) or 3 (RGB)')
    g('--no_augment', action='store_true', help='no random flips and rotations of training patches')

    g = parser.add_argument_group('model').add_argument
    g('--model', default=registry.DEFAULT,
      help='model name, any letter case: ' + '; '.join(f'{a.name} ({a.description})'
                                                       for a in registry.architectures().values()))
    g('--pre_train', type=str, default='', help='checkpoint (.pt state_dict) to start from')
    for name, users in registry.model_flags().items():
        g(f'--{name}', type=users[0][1].type, help=_model_flag_help(users))
    g('--precision', type=str, default='single', help=f'{"|".join(PRECISIONS)} (autocast)')
    g('--chop', action='store_true', help='tiled inference for large images')
    g('--chop_size', type=int, default=96, help='LR tile size for --chop')
    g('--chop_overlap', type=int, default=12, help='LR overlap between tiles for --chop')
    g('--chop_batch', type=int, default=4, help='tiles per forward pass for --chop')
    g('--self_ensemble', action='store_true', help='average the 8 flips/transposes at test time')
    g('--compile', nargs='?', const='inductor', default=None, metavar='BACKEND',
      help='run the network through torch.compile (backend inductor unless named): on a GPU a faster step '
           'once the first batches have paid for compiling (docs/training.md); checkpoints are unchanged')

    g = parser.add_argument_group('training').add_argument
    g('--reset', action='store_true',
      help='start the run over: delete its folder (only a folder this program made: it holds its config.txt)')
    g('--test_every', type=int, default=1000, help='batches per epoch')
    g('--epochs', type=int, default=1000, help='epochs to train')
    g('--batch_size', type=int, default=16, help='total batch size over all processes')
    g('--test_only', action='store_true',
      help='evaluate only: the weights of --pre_train, or of --load <run> (its latest model; --resume N: epoch N)')
    g('--untrained', action='store_true', help='with --test_only: evaluate a randomly initialised network on purpose')

    g = parser.add_argument_group('optimization').add_argument
    g('--lr', type=float, default=1e-4, help='learning rate')
    g('--decay', type=str, default='200', help='"-"-separated epochs at which the lr is multiplied by --gamma')
    g('--gamma', type=float, default=0.5, help='learning-rate decay factor')
    g('--optimizer', default='ADAM', help=f'{"|".join(OPTIMIZERS)}')
    g('--momentum', type=float, default=0.9, help='SGD momentum')
    g('--betas', type=str, default='0.9+0.999', help='ADAM betas, "+"- or ","-separated')
    g('--epsilon', type=float, default=1e-8, help='ADAM epsilon')
    g('--weight_decay', type=float, default=0, help='weight decay')
    g('--gclip', type=float, default=0, help='gradient-norm clipping (0: none)')
    g('--loss', type=str, default='1*L1', help='weighted loss terms, e.g. 1*L1+0.5*MSE')
    g('--skip_threshold', type=float, default=1e8,
      help='skip a batch whose loss exceeds this times the running loss (NaN/inf always skipped)')

    g = parser.add_argument_group('logging').add_argument
    g('--save_dir', type=str, default='../experiment', help='runs are written to <save_dir>/<save>/')
    g('--save', type=str, default='test', help='name of this run')
    g('--load', type=str, default='', help='name of a run under --save_dir to continue')
    g('--resume', type=int, default=0, help='with --load: -1 latest, N epoch N, 0 start anew')
    g('--save_models', action='store_true', help='keep a checkpoint of every epoch')
    g('--save_safetensors', action='store_true', help='also write each model file as .safetensors beside its .pt')
    g('--print_every', type=int, default=100, help='batches between log lines')
    g('--save_results', action='store_true', help='write the SR images of the test sets')
    g('--save_gt', action='store_true', help='with --save_results, write LR and HR too')
    g('--ssim', action='store_true', help='accepted for compatibility with EDSR command lines and changes nothing: '
      'SSIM is always computed and logged')
    g('--tensorboard', action='store_true',
      help='also write TensorBoard events (losses, lr, PSNR/SSIM, LCoA statistics, SR/HR pairs) to <save>/tb/')
    g('--compare_bicubic', action='store_true',
      help='also score bicubic upscaling; the final evaluation prints a per-image table, bicubic vs model')
    return parser


def _fail(flag: str, value, allowed: str):
    raise bad_flag(flag, value, allowed)


def _check_compile_backend(backend: str) -> None:
    """``--compile BACKEND`` names one of torch.compile's backends (its registry loads only when the flag is given)."""
    from torch import _dynamo

    backends = _dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        _fail('compile', backend, f'torch.compile backends: {", ".join(backends)}')


def _split_list(flag: str, value: str, sep: str, kind=int, allowed: str = ''):
    try:
        items = [kind(v) for v in value.split(sep)]
    except ValueError:
        _fail(flag, value, allowed)
    return items


def _parse_range(value: str):
    m = re.fullmatch(r'\s*(\d+)-(\d+)\s*', value)
    if not m or int(m.group(1)) < 1 or int(m.group(1)) > int(m.group(2)):
        return None
    return int(m.group(1)), int(m.group(2))


def _names(flag: str, value: str, allowed, layouts: str = ''):
    lookup = {a.lower(): a for a in allowed}
    out = []
    for name in value.split('+'):
        if name.lower() not in lookup:
            _fail(flag, value, f'unknown name {name!r}; allowed: {", ".join(allowed)} ("+"-separated)'
                  + (f'; layouts: {layouts}' if layouts else ''))
        out.append(lookup[name.lower()])
    return out


def _finalize_data_flags(args: argparse.Namespace) -> None:
    """The data sets as lists of names, --dir_train with Folder alone, --data_range as two ranges."""
    args.data_train = _names('data_train', args.data_train, TRAIN_SETS, trainsets.LAYOUTS)
    if ('Folder' in args.data_train) != (args.dir_train is not None):
        if args.dir_train is None:
            _fail('data_train', '+'.join(args.data_train), 'Folder needs --dir_train PATH, a folder of HR images')
        _fail('dir_train', args.dir_train, 'is for --data_train Folder (add Folder to --data_train)')
    args.data_test = _names('data_test', args.data_test, TEST_SETS)

    parts = args.data_range.split('/')
    ranges = [_parse_range(p) for p in parts]
    if len(parts) not in (1, 2) or None in ranges:
        _fail('data_range', args.data_range, 'expected "a-b/c-d" (training/validation) or "a-b" (both) with '
              '1 <= a <= b and 1 <= c <= d, e.g. 1-800/801-810')
    if len(ranges) == 1:  # EDSR-PyTorch's single range: the images to train on, or to test with --test_only
        ranges *= 2
    args.train_range, args.test_range = ranges


def fill_model_defaults(args: argparse.Namespace) -> None:
    """Give every model flag of ``args.model`` that is still ``None`` the model's published default;
    refuse a given model flag that the model does not use."""
    arch = registry.get(args.model)
    for flag in registry.model_flags():
        if flag in arch.defaults:
            if getattr(args, flag) is None:
                setattr(args, flag, arch.defaults[flag])
        elif flag in args.given and getattr(args, flag) is not None:
            raise arch.no_such_option(flag, getattr(args, flag))


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """Split list flags, fill in the model's defaults and check every value; raises UserError naming the first
    bad flag."""
    for flag, value in vars(args).items():
        check_finite(flag, value)
    arch = registry.get(args.model)
    args.model = arch.name
    if not hasattr(args, 'given'):
        args.given = set()
    fill_model_defaults(args)
    args.scale = arch.scale_list(args.scale)

    _finalize_data_flags(args)

    decay = args.decay.split('-')
    if not all(d.strip().isdigit() and int(d) > 0 for d in decay):
        _fail('decay', args.decay, 'expected positive epochs separated by "-", e.g. 300-600-900-1200')
    args.decay = [int(d) for d in decay]
    if args.decay != sorted(args.decay):
        _fail('decay', '-'.join(map(str, args.decay)), 'milestones must increase')

    betas = _split_list('betas', args.betas.replace(',', '+'), '+', float, 'two floats in [0, 1), e.g. 0.9+0.999')
    if len(betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in betas):
        _fail('betas', args.betas, 'two floats in [0, 1), e.g. 0.9+0.999')
    args.betas = tuple(betas)

    arch.check_options(args)
    for flag in ('batch_size', 'patch_size', 'epochs', 'test_every', 'print_every', 'n_GPUs',
                 'chop_size', 'chop_batch', 'dist_timeout'):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            _fail(flag, getattr(args, flag), 'must be a positive integer')
    for flag in ('n_threads', 'chop_overlap', 'seed'):
        if getattr(args, flag) < 0:
            _fail(flag, getattr(args, flag), 'must be >= 0')
    for flag in ('lr', 'gamma', 'epsilon', 'skip_threshold'):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            _fail(flag, getattr(args, flag), 'must be > 0')
    for flag in ('weight_decay', 'gclip', 'momentum'):
        if getattr(args, flag) < 0:
            _fail(flag, getattr(args, flag), 'must be >= 0')
    for s in [] if args.test_only else args.scale:  # patches are only cut for training
        if args.patch_size % s:
            _fail('patch_size', args.patch_size, f'must be divisible by the scale ({s})')
    if args.chop_overlap * 2 >= args.chop_size:
        _fail('chop_overlap', args.chop_overlap, f'must be less than half of --chop_size ({args.chop_size})')
    if args.precision not in PRECISIONS:
        _fail('precision', args.precision, f'allowed: {", ".join(PRECISIONS)}')
    if args.compile is not None:
        _check_compile_backend(args.compile)
    if args.optimizer not in OPTIMIZERS:
        _fail('optimizer', args.optimizer, f'allowed: {", ".join(OPTIMIZERS)}')
    if args.ext not in EXTS:
        _fail('ext', args.ext, f'allowed: {", ".join(EXTS)}')
    if args.resume < -1:
        _fail('resume', args.resume, '-1 (latest), 0 (start anew) or an epoch number')
    if args.pre_train == '.':  # the official default meaning "none"
        args.pre_train = ''
    run_flags.check_run_flags(args)
    args.device = 'cpu' if args.cpu else 'cuda'
    return args


def _given(parser: argparse.ArgumentParser, argv) -> set[str]:
    """Names of the options set on the command line ``argv`` (whatever their value)."""
    unset = object()
    # argparse fills in a default only for attributes the namespace lacks: pre-set ones stay ``unset``
    # unless their option is on the command line.
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != 'help'})
    found, _ = parser.parse_known_args(argv, namespace)
    return {dest for dest, value in vars(found).items() if value is not unset}


def parse(argv=None) -> argparse.Namespace:
    """The command line ``argv`` (default ``sys.argv[1:]``) with its template's values as defaults, unchecked.

    ``args.given`` records the options set on the command line or by the template (flags win over the
    template). Model flags not given are ``None`` until :func:`finalize`.
    """
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    given = _given(parser, argv)
    if first.template not in (None, '.'):  # '.': EDSR's default, meaning none
        try:
            preset = template.get_template(first.template, model=first.model if 'model' in given else None)
        except KeyError:
            raise UserError(f'--template {first.template!r}: allowed: {", ".join(template.TEMPLATES)}') from None
        parser.set_defaults(**preset)
        given |= set(preset)
    args = parser.parse_args(argv)
    args.given = given - {'template'}
    return args


def parse_args(argv=None) -> argparse.Namespace:
    """:func:`parse` then :func:`finalize`: the checked options of the command line ``argv``, read from the flags
    alone (a network built from flags in code); ``main.py`` starts from :func:`parse_main_args`."""
    return finalize(parse(argv))


def parse_main_args(argv=None, *, weights_flag: str = '--pre_train') -> argparse.Namespace:
    """``main.py``'s checked options from the command line ``argv``: :func:`parse`, then the options not given
    read from the weights the run starts from, then :func:`finalize`.

    The weights are those of ``--pre_train`` (named ``weights_flag`` in messages: ``visualize.py``'s
    ``--weights``), or the network ``--load <run> --test_only`` evaluates, or the one ``--load <run> --resume N``
    continues, whose options not given are first the run's own (from its config.txt). The model options not
    given come from the weights and the config.txt of their run (:func:`model.checkpoint.read`);
    ``args.checkpoint`` is what was read (None: no weights, or a file that does not exist, which the loader
    reports), ``args.pre_train_detected`` the lines saying which value came from where.
    """
    args = parse(argv)
    config, taken = _take_run_options(args)
    resumed = run_flags.resumed_run(args)
    weights = run_flags.evaluated_weights(args)  # --load <run> --test_only: the run's network file
    args.checkpoint = None
    if resumed is not None:
        flag = f'--load {args.load} --resume {args.resume}:'
        lines = [f'{flag} the options not given are the run\'s, from {config}'] if taken else []
        lines.append(_apply_weights(args, flag, run_flags.run_weights(resumed, args.resume), recorded_range=True))
        args.pre_train_detected = '\n'.join(line for line in lines if line)
    elif weights:
        args.pre_train_detected = _apply_weights(args, f'--load {args.load} --test_only:', weights,
                                                 recorded_range=True)
    else:
        args.pre_train_detected = _apply_weights(args, weights_flag, args.pre_train)
    try:
        finalize(args)
    except UserError as e:  # a value from config.txt is named there, not as a flag the user did not give
        key = next((k for k in taken if str(e).startswith(f'--{k} ')), None)
        if key is None:
            raise
        raise UserError(f'{config}: {key} {str(e)[len(key) + 3:]} (the run\'s value; correct it there or give '
                        f'--{key})') from None
    return args


def _apply_weights(args: argparse.Namespace, flag: str, path: str | Path, *, recorded_range: bool = False) -> str:
    """Fill the model options not given (not in ``args.given``) from the weights ``path`` and their run's
    config.txt, and keep what was read as ``args.checkpoint``. A given ``--model`` other than the checkpoint's is
    named as such; any other contradiction surfaces as the loader's mismatch error. ``flag`` names the file in
    messages; ``recorded_range``: a given ``--rgb_range`` must be the one the weights record. Returns the log
    line (empty without weights to read)."""
    if not path or path == '.' or not Path(path).exists():
        return ''  # nothing to read: a missing file is reported by the loader, naming it
    given = {key: getattr(args, key) for key in args.given}
    ckpt = checkpoint.read(path, what=flag, given=given, for_flags=True)
    detected = ckpt.detected
    if 'model' in given and str(args.model).lower() != detected.model.lower():
        by = f' (--model or --template {args.template})' if args.template not in (None, '.') else ''
        raise checkpoint.UnknownCheckpoint(
            f'{flag} {path}: a checkpoint of {detected.model} x{detected.scale}, but the model is {args.model}{by}; '
            f'give --model {detected.model}, or leave out --model and --template to take the architecture from '
            'the weights')
    if recorded_range and 'rgb_range' in given and ckpt.records_other('rgb_range', args.rgb_range):
        raise UserError(f'{flag} rgb_range {args.rgb_range}, but {path} records rgb_range='
                        f'{detected.options["rgb_range"]} (in its mean shift); give --rgb_range '
                        f'{detected.options["rgb_range"]}')
    for key, value in ckpt.options.items():
        if ckpt.sources[key] != checkpoint.FLAG:
            setattr(args, key, value)
    args.checkpoint = ckpt
    return ckpt.description


def _take_run_options(args: argparse.Namespace) -> tuple[Path | None, set[str]]:
    """``--load RUN --resume N``: every option not given now (but those of :data:`NOT_RESUMED`) takes the value
    the run's config.txt records for its last start, as if given. Returns the config.txt and the options taken
    (none for other flags, or a run without a config.txt, which the run folder reports)."""
    run = run_flags.resumed_run(args)
    config = None if run is None else run / run_config.RUN_CONFIG
    if config is None or not config.is_file():
        return None, set()
    try:
        recorded = run_config.read(config)
    except OSError as e:
        raise UserError(f'{config}: cannot read it ({e.strerror or e})') from None
    if recorded.pop('_truncated', False):
        raise UserError(f'{config}: the options of the run\'s last start are missing (the file was cut short?); '
                        'delete that incomplete last block to resume with the ones before it')
    dests = {a.dest for a in build_parser()._actions}
    taken = set()
    for key, value in recorded.items():
        if key not in dests or key in NOT_RESUMED or key in args.given or value is None:
            continue
        try:
            setattr(args, key, as_flag_value(key, value))
        except ValueError as e:
            raise UserError(f'{config}: {key}: {value!r} is not {e} (the run\'s value; correct it there or give '
                            f'--{key})') from None
        taken.add(key)
    args.given |= taken
    return config, taken


# The list options finalize splits, and the separator their flag joins them with (config.txt records the lists).
_JOINED = {'scale': '+', 'data_train': '+', 'data_test': '+', 'decay': '-', 'betas': '+'}
# What --load RUN --resume takes from the run's config.txt only when given again: which run, what to do with it,
# and this machine's hardware.
NOT_RESUMED = frozenset({'load', 'resume', 'save', 'save_dir', 'reset', 'test_only', 'untrained', 'pre_train',
                         'template', 'cpu', 'n_GPUs', 'n_threads', 'dist_timeout'})


def as_flag_value(dest: str, value):
    """A value of option ``dest`` as config.txt records it (after :func:`finalize`), as :func:`parse` gives it:
    lists joined as on the command line, the flag's type. ValueError (its text: what the flag takes) if it is
    not a value of the flag; KeyError for no such option."""
    action = {a.dest: a for a in build_parser()._actions}[dest]
    if value is None:
        return None
    if dest in _JOINED and isinstance(value, list | tuple):
        value = _JOINED[dest].join(map(str, value))
    if isinstance(action.const, bool) and action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ValueError('True or False')
        return value
    kind = action.type or str
    if kind is str:
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise ValueError('an integer' if kind is int else 'a number')
    return kind(value)
