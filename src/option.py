"""Command-line options: one argparse parser, parsed on demand (never at import time).

``parse_args(argv)`` returns an ``argparse.Namespace`` whose list-valued flags are already split
(``--scale 2+3`` -> ``[2, 3]``, ``--decay 300-600`` -> ``[300, 600]``) and whose values have been
checked. A bad value raises :class:`errors.UserError` with one line naming the flag and what is
allowed; ``main.py`` prints it without a traceback.
"""

import argparse
import re

import torch

import template
from errors import UserError

MODELS = ('LCoAN',)
TRAIN_SETS = ('DIV2K', 'Sample')
BENCHMARK_SETS = ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109')
TEST_SETS = ('DIV2K', 'Sample', 'Demo') + BENCHMARK_SETS
SCALES = (2, 3, 4)
PRECISIONS = ('single', 'half', 'bf16')
ATTENTION_IMPLS = ('fast', 'reference')  # the keys of model.lcoa.IMPLEMENTATIONS
OPTIMIZERS = ('ADAM', 'SGD', 'RMSprop')
EXTS = ('img', 'sep', 'sep_reset')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='LCoAN: Learnable Collaborative Attention Network for single-image SR',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add('--template', default='.', help=f'preset of options: one of {", ".join(template.TEMPLATES)}')

    g = parser.add_argument_group('hardware').add_argument
    g('--n_threads', type=int, default=6, help='data-loading worker processes (0: load in the main process)')
    g('--cpu', action='store_true', help='run on the CPU even if a GPU is available')
    g('--n_GPUs', type=int, default=1, help='GPUs on this machine; more than 1 starts DistributedDataParallel')
    g('--seed', type=int, default=1, help='random seed')
    g('--dist_timeout', type=int, default=600,
      help='seconds a process waits for the others in a collective before the run fails')

    g = parser.add_argument_group('data').add_argument
    g('--dir_data', type=str, default='../dataset', help='folder holding DIV2K/ and benchmark/')
    g('--dir_demo', type=str, default='../test', help='folder of images for --data_test Demo')
    g('--data_train', type=str, default='DIV2K', help=f'training set(s), "+"-separated: {"|".join(TRAIN_SETS)}')
    g('--data_test', type=str, default='DIV2K', help=f'test set(s), "+"-separated: {"|".join(TEST_SETS)}')
    g('--data_range', type=str, default='1-800/801-810', help='DIV2K train/validation image index ranges')
    g('--ext', type=str, default='sep', help=f'image storage: {"|".join(EXTS)} (sep: decoded .npy cache)')
    g('--scale', type=str, default='4', help='super-resolution scale(s), "+"-separated')
    g('--patch_size', type=int, default=192, help='HR training patch size (a multiple of the scale)')
    g('--rgb_range', type=int, default=255, help='pixel values are scaled to [0, rgb_range]')
    g('--n_colors', type=int, default=3, help='1 (Y channel) or 3 (RGB)')
    g('--no_augment', action='store_true', help='no random flips and rotations of training patches')

    g = parser.add_argument_group('model').add_argument
    g('--model', default='LCoAN', help=f'model name: {"|".join(MODELS)}')
    g('--pre_train', type=str, default='', help='checkpoint (.pt state_dict) to start from')
    g('--n_resgroups', type=int, default=10, help='residual groups')
    g('--n_resblocks', type=int, default=4, help='residual blocks per group')
    g('--n_feats', type=int, default=128, help='feature channels')
    g('--reduction', type=int, default=1, help='query/key embedding has n_feats // reduction channels')
    g('--res_scale', type=float, default=0.1, help='residual scaling of groups and attention')
    g('--n_clusters', type=int, default=128, help='k-means clusters of the learnable sparse pattern')
    g('--window_size', type=int, default=384, help='attention window (positions sorted by cluster)')
    g('--ema_decay', type=float, default=0.999,
      help='decay of the centroids\' moving average, in [0, 1]; 1 freezes them at their k-means initialisation, '
      'as the official code (which never applies its moving average) trained the published models')
    g('--n_hashes', type=int, default=1, help='k-means rounds')
    g('--attention_impl', type=str, default='fast',
      help=f'sparse-attention implementation: {"|".join(ATTENTION_IMPLS)} (same outputs; reference is the plain one)')
    g('--precision', type=str, default='single', help=f'{"|".join(PRECISIONS)} (autocast on CUDA)')
    g('--chop', action='store_true', help='tiled inference for large images')
    g('--chop_size', type=int, default=96, help='LR tile size for --chop')
    g('--chop_overlap', type=int, default=12, help='LR overlap between tiles for --chop')
    g('--chop_batch', type=int, default=4, help='tiles per forward pass for --chop')
    g('--self_ensemble', action='store_true', help='average the 8 flips/transposes at test time')

    g = parser.add_argument_group('training').add_argument
    g('--reset', action='store_true', help='start the run in --load over')
    g('--test_every', type=int, default=1000, help='batches per epoch')
    g('--epochs', type=int, default=1000, help='epochs to train')
    g('--batch_size', type=int, default=16, help='total batch size over all processes')
    g('--test_only', action='store_true', help='evaluate only')

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
    raise UserError(f'--{flag} {value!r}: {allowed}')


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


def _names(flag: str, value: str, allowed):
    lookup = {a.lower(): a for a in allowed}
    out = []
    for name in value.split('+'):
        if name.lower() not in lookup:
            _fail(flag, value, f'unknown name {name!r}; allowed: {", ".join(allowed)} ("+"-separated)')
        out.append(lookup[name.lower()])
    return out


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """Split list flags and check every value; raises UserError naming the first bad flag."""
    model = {m.lower(): m for m in MODELS}.get(str(args.model).lower())
    if model is None:
        _fail('model', args.model, f'allowed: {", ".join(MODELS)}')
    args.model = model

    args.scale = _split_list('scale', args.scale, '+', int, f'"+"-separated integers from {SCALES}')
    if not args.scale or any(s not in SCALES for s in args.scale):
        _fail('scale', '+'.join(map(str, args.scale)), f'LCoAN upsamples by {", ".join(map(str, SCALES))}')
    if len(args.scale) != 1:
        _fail('scale', '+'.join(map(str, args.scale)), 'LCoAN has one upsampler: give a single scale')

    args.data_train = _names('data_train', args.data_train, TRAIN_SETS)
    args.data_test = _names('data_test', args.data_test, TEST_SETS)

    parts = args.data_range.split('/')
    ranges = [_parse_range(p) for p in parts]
    if len(parts) != 2 or None in ranges:
        _fail('data_range', args.data_range, 'expected "a-b/c-d" with 1 <= a <= b and 1 <= c <= d, e.g. 1-800/801-810')
    args.train_range, args.test_range = ranges

    decay = args.decay.split('-')
    if not all(d.strip().isdigit() and int(d) > 0 for d in decay):
        _fail('decay', args.decay, 'expected positive epochs separated by "-", e.g. 300-600-900-1200')
    args.decay = [int(d) for d in decay]
    if args.decay != sorted(args.decay):
        _fail('decay', '-'.join(map(str, args.decay)), 'milestones must increase')

    betas = _split_list('betas', args.betas.replace(',', '+'), '+', float, 'two floats in [0, 1), e.g. 0.9+0.999')
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        _fail('betas', args.betas, 'two floats in [0, 1), e.g. 0.9+0.999')
    args.betas = tuple(betas)

    for flag in ('n_resgroups', 'n_resblocks', 'n_feats', 'reduction', 'n_clusters', 'window_size',
                 'n_hashes', 'batch_size', 'patch_size', 'epochs', 'test_every', 'print_every',
                 'rgb_range', 'n_GPUs', 'chop_size', 'chop_batch', 'dist_timeout'):
        if getattr(args, flag) <= 0:
            _fail(flag, getattr(args, flag), 'must be a positive integer')
    for flag in ('n_threads', 'chop_overlap', 'seed'):
        if getattr(args, flag) < 0:
            _fail(flag, getattr(args, flag), 'must be >= 0')
    for flag in ('lr', 'res_scale', 'gamma', 'epsilon', 'skip_threshold'):
        if not getattr(args, flag) > 0:
            _fail(flag, getattr(args, flag), 'must be > 0')
    for flag in ('weight_decay', 'gclip', 'momentum'):
        if getattr(args, flag) < 0:
            _fail(flag, getattr(args, flag), 'must be >= 0')
    if args.n_feats % args.reduction:
        _fail('reduction', args.reduction, f'must divide --n_feats ({args.n_feats})')
    if not 0 <= args.ema_decay <= 1:
        _fail('ema_decay', args.ema_decay, 'must be in [0, 1] (1 freezes the centroids)')
    if args.n_colors not in (1, 3):
        _fail('n_colors', args.n_colors, 'allowed: 1 (Y channel) or 3 (RGB)')
    for s in args.scale:
        if args.patch_size % s:
            _fail('patch_size', args.patch_size, f'must be divisible by the scale ({s})')
    if args.chop_overlap * 2 >= args.chop_size:
        _fail('chop_overlap', args.chop_overlap, f'must be less than half of --chop_size ({args.chop_size})')
    if args.attention_impl not in ATTENTION_IMPLS:
        _fail('attention_impl', args.attention_impl, f'allowed: {", ".join(ATTENTION_IMPLS)}')
    if args.precision not in PRECISIONS:
        _fail('precision', args.precision, f'allowed: {", ".join(PRECISIONS)}')
    if args.optimizer not in OPTIMIZERS:
        _fail('optimizer', args.optimizer, f'allowed: {", ".join(OPTIMIZERS)}')
    if args.ext not in EXTS:
        _fail('ext', args.ext, f'allowed: {", ".join(EXTS)}')
    if args.resume < -1:
        _fail('resume', args.resume, '-1 (latest), 0 (start anew) or an epoch number')
    if args.pre_train == '.':  # the official default meaning "none"
        args.pre_train = ''

    args.cuda_available = torch.cuda.is_available()
    args.cpu_requested = args.cpu
    args.cpu = args.cpu or not args.cuda_available
    args.device = 'cpu' if args.cpu else 'cuda'
    return args


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``); a template's values act as defaults, so flags win."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.template != '.':
        try:
            parser.set_defaults(**template.get_template(first.template))
        except KeyError:
            raise UserError(f'--template {first.template!r}: allowed: {", ".join(template.TEMPLATES)}') from None
    args = parser.parse_args(argv)
    return finalize(args)
