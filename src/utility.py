"""Run folder, logging, durable files, metrics and optimizer set-up shared by the trainer.

Metrics follow the published SR tables: PSNR and SSIM on the Y channel of the 8-bit YCbCr image
(ITU-R BT.601 as in MATLAB's ``rgb2ycbcr``) with ``scale`` border pixels shaved, after the SR image
has been quantised to the 8-bit grid. DIV2K validation follows EDSR instead: PSNR on RGB with
``scale + 6`` pixels shaved (SSIM stays on Y with the same shave).

Every file that a resumed run reads back is written atomically (:func:`atomic_save`,
:func:`atomic_write`): a temporary file in the same folder, flushed and fsynced, then
``os.replace``. A process killed at any moment leaves either the old or the new file, never a torn one.
"""

import argparse
import datetime
import math
import os
import queue
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm import tqdm

import distributed
from errors import UserError

TRAINING_STATE = 'training_state.pt'
# BT.601 luma for 8-bit RGB, as MATLAB's rgb2ycbcr: Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256.
Y_COEFFS = (65.738, 129.057, 25.064)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


# ----------------------------------------------------------------------------------------------
# timing


class timer:  # lower case: EDSR's name, used the same way
    """Stopwatch that can accumulate several held intervals."""

    def __init__(self) -> None:
        self.acc = 0.0
        self.tic()

    def tic(self) -> None:
        self.t0 = time.perf_counter()

    def toc(self, restart: bool = False) -> float:
        diff = time.perf_counter() - self.t0
        if restart:
            self.t0 = time.perf_counter()
        return diff

    def hold(self) -> None:
        self.acc += self.toc()

    def release(self) -> float:
        ret, self.acc = self.acc, 0.0
        return ret


# ----------------------------------------------------------------------------------------------
# durable files


def _fsync_dir(folder: Path) -> None:
    # The rename itself is only durable once the folder entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable, mode: str = 'wb') -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it over ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its old content and the temporary
    file is removed (or, after a kill, left as a hidden ``.<name>.tmp-<pid>`` next to it).
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj, path) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written ``path`` behind."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path) -> None:
    atomic_write(path, lambda f: f.write(text), mode='w')


def load_state(path):
    """``torch.load(path, weights_only=True)`` onto the CPU; UserError naming the file if it fails."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'{path}: no such checkpoint file')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{path}: not a readable checkpoint ({reason[:200]})') from None


def check_finite_state(state: dict, what: str) -> None:
    """Raise RuntimeError if any floating tensor in ``state`` holds NaN or inf (never save those)."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise RuntimeError(f'refusing to save {what}: {key} holds NaN or inf values')


# ----------------------------------------------------------------------------------------------
# random number generators


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from ``parts`` (e.g. seed, epoch, rank) so that streams do not overlap."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def seed_everything(seed: int, generator: torch.Generator | None = None) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators, and ``generator``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if generator is not None:
        generator.manual_seed(seed)


def get_rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG state as tensors and plain types, so that it loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': version, 'internal': list(internal), 'gauss_next': gauss_next},
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'loader': generator.get_state() if generator is not None else None,
    }
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    p = state['python']
    random.setstate((p['version'], tuple(p['internal']), p['gauss_next']))
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    if generator is not None and state['loader'] is not None:
        generator.set_state(state['loader'])


# ----------------------------------------------------------------------------------------------
# metrics


def quantize(img: torch.Tensor, rgb_range: float) -> torch.Tensor:
    """Round ``img`` (values in [0, rgb_range]) to the 8-bit grid, as a saved PNG would hold it."""
    pixel_range = 255 / rgb_range
    return img.mul(pixel_range).clamp(0, 255).round().div(pixel_range)


def _check_pair(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> None:
    if sr.dim() != 4 or hr.dim() != 4:
        raise ValueError(f'expected (N, C, H, W) tensors, got sr {tuple(sr.shape)} and hr {tuple(hr.shape)}')
    if sr.shape != hr.shape:
        raise ValueError(f'sr {tuple(sr.shape)} and hr {tuple(hr.shape)} differ in shape')
    if sr.shape[1] not in (1, 3):
        raise ValueError(f'expected 1 (Y) or 3 (RGB) channels, got {sr.shape[1]}')
    if min(sr.shape[-2:]) <= 2 * shave:
        raise ValueError(f'image {tuple(sr.shape[-2:])} is too small to shave {shave} pixels per border')


def _to_8bit(sr: torch.Tensor, hr: torch.Tensor, rgb_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as integer 8-bit levels in float64.

    SR is quantised as a saved PNG would be (:func:`quantize` in its own dtype); HR from the loaders
    is on the 8-bit grid already, and rounding it removes float32 representation noise (k/255).
    """
    pixel_range = 255 / rgb_range
    sr8 = quantize(sr, rgb_range).double().mul(pixel_range).round()
    hr8 = hr.double().mul(pixel_range).clamp(0, 255).round()
    return sr8, hr8


def _luma(img8: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) on the 8-bit scale -> (N, 1, H, W) Y in [16, 235]; one channel is Y already."""
    if img8.shape[1] == 1:
        return img8
    weights = img8.new_tensor(Y_COEFFS).view(1, 3, 1, 1) / 256
    return (img8 * weights).sum(dim=1, keepdim=True) + 16


def _shave(img: torch.Tensor, shave: int) -> torch.Tensor:
    return img[..., shave:img.shape[-2] - shave, shave:img.shape[-1] - shave] if shave > 0 else img


def calc_psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float, benchmark: bool = True) -> float:
    """PSNR in dB of ``sr`` against ``hr`` ((N, C, H, W) in [0, rgb_range]), averaged over the batch.

    benchmark: Y channel, ``scale`` pixels shaved (benchmark tables); otherwise RGB with
    ``scale + 6`` shaved (EDSR's DIV2K validation). ``sr`` is quantised to 8 bits first (``hr`` is
    on the 8-bit grid already). Returns ``inf`` for identical images.
    """
    shave = scale if benchmark else scale + 6
    _check_pair(sr, hr, shave)
    sr8, hr8 = _to_8bit(sr, hr, rgb_range)
    if benchmark:
        sr8, hr8 = _luma(sr8), _luma(hr8)
    mse = _shave(sr8 - hr8, shave).pow(2).flatten(1).mean(dim=1)
    psnr = [math.inf if m == 0 else 10 * math.log10(255 ** 2 / m) for m in mse.tolist()]
    return float(sum(psnr) / len(psnr))


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _filter_valid(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering keeping only the fully covered ('valid') positions."""
    img = F.conv2d(img, g.view(1, 1, -1, 1))
    return F.conv2d(img, g.view(1, 1, 1, -1))


def calc_ssim(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float, benchmark: bool = True) -> float:
    """SSIM as MATLAB's ``ssim`` (Wang et al.) on the 8-bit Y channel, averaged over the batch.

    11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 255, mean over the
    'valid' positions; ``scale`` pixels shaved (``scale + 6`` when not benchmark), ``sr``
    quantised to 8 bits first. One-channel inputs are taken as Y.
    """
    shave = scale if benchmark else scale + 6
    _check_pair(sr, hr, shave)
    if min(sr.shape[-2:]) - 2 * shave < SSIM_WINDOW:
        raise ValueError(f'image {tuple(sr.shape[-2:])} minus the shaved border is smaller than the SSIM window')
    sr8, hr8 = _to_8bit(sr, hr, rgb_range)
    x = _shave(_luma(sr8), shave)
    y = _shave(_luma(hr8), shave)
    g = _gaussian_window(x.device)
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x ** 2
    var_y = _filter_valid(y * y, g) - mu_y ** 2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.flatten(1).mean(dim=1).mean())


# ----------------------------------------------------------------------------------------------
# optimisation


def make_optimizer(args, params) -> torch.optim.Optimizer:
    """--optimizer ADAM (--betas, --epsilon) | SGD (--momentum) | RMSprop (--epsilon), --lr, --weight_decay."""
    params = [p for p in params if p.requires_grad]
    common = {'lr': args.lr, 'weight_decay': args.weight_decay}
    if args.optimizer == 'ADAM':
        return torch.optim.Adam(params, betas=tuple(args.betas), eps=args.epsilon, **common)
    if args.optimizer == 'SGD':
        return torch.optim.SGD(params, momentum=args.momentum, **common)
    if args.optimizer == 'RMSprop':
        return torch.optim.RMSprop(params, eps=args.epsilon, **common)
    raise UserError(f'--optimizer {args.optimizer!r}: allowed: ADAM, SGD, RMSprop')


def make_scheduler(args, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    """The lr is multiplied by --gamma at each epoch of --decay (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.decay), gamma=args.gamma)


# ----------------------------------------------------------------------------------------------
# run folder


def _check_run_name(flag: str, name: str) -> None:
    # The folder may be deleted by --reset: it must stay inside --save_dir.
    if not name or name in ('.', '..') or '/' in name or '\\' in name:
        raise UserError(f'--{flag} {name!r}: a run name, not a path (runs live under --save_dir)')


def _plot_png(path: Path, draw: Callable) -> None:
    # A bare Figure on the Agg canvas: no pyplot, so no global backend or figure registry.
    fig = Figure()
    FigureCanvasAgg(fig)
    draw(fig)
    atomic_write(path, lambda f: fig.savefig(f, format='png'))


class checkpoint:  # lower case: EDSR's name, used the same way
    """The run folder ``<save_dir>/<save>/`` (or ``<save_dir>/<load>/`` with --load) and its files.

    Only the main process (rank 0) writes. Layout::

        config.txt  log.txt  training_state.pt  loss_log.csv  psnr_log.csv  loss_<term>.png
        psnr_<set>.png  metrics_<set>_x<scale>.csv  results-<set>/<img>_x<s>_{SR,LR,HR}.png
        model/model_latest.pt  model/model_best.pt  model/model_<epoch>.pt  state/training_state_<epoch>.pt

    Positional argument, as main.py and EDSR pass it.

    Args:
        args: parsed options; uses ``save_dir, save, load, resume, reset, test_only, rgb_range``
            and writes all of them to config.txt.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.is_main = distributed.is_main()
        if args.load:
            _check_run_name('load', args.load)
            self.dir = Path(args.save_dir) / args.load
            if not self.dir.is_dir():
                raise UserError(f'--load {args.load!r}: no run folder {self.dir}')
        else:
            _check_run_name('save', args.save)
            self.dir = Path(args.save_dir) / args.save
        if args.resume != 0 and not args.load:
            raise UserError(f'--resume {args.resume}: needs --load <run> (the run to continue)')
        if args.resume != 0 and args.pre_train:
            raise UserError(f'--pre_train {args.pre_train!r} and --resume {args.resume}: choose one (the resumed '
                            'run brings its own weights)')
        if args.resume != 0 and args.reset:
            raise UserError(f'--reset and --resume {args.resume}: choose one (start over or continue)')
        state_file = self.dir / TRAINING_STATE
        if args.reset:
            if self.is_main and self.dir.exists():
                shutil.rmtree(self.dir)
            distributed.barrier()
        elif not args.test_only and args.resume == 0 and state_file.exists():
            flag, name = ('load', args.load) if args.load else ('save', args.save)
            raise UserError(f'--{flag} {name!r}: {self.dir} holds a run already; continue it with '
                            f'--load {name} --resume -1, or start it over with --reset')

        self._log_file = None
        self._queue: queue.Queue | None = None
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        if self.is_main:
            (self.dir / 'model').mkdir(parents=True, exist_ok=True)
            # Temporary files of a killed writer (atomic_write) are never read: remove them.
            for folder in (self.dir, self.dir / 'model', self.dir / 'state'):
                for stale in folder.glob('.*.tmp-*'):
                    stale.unlink(missing_ok=True)
            self._log_file = open(self.dir / 'log.txt', 'a')
            self._write_config()

    # -- paths and text logs

    def get_path(self, *parts) -> Path:
        return self.dir.joinpath(*map(str, parts))

    def _write_config(self) -> None:
        path = self.get_path('config.txt')
        old = path.read_text() if path.exists() else ''
        now = datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')
        lines = [now, 'command: ' + ' '.join(sys.argv), '']
        lines += [f'{key}: {value}' for key, value in vars(self.args).items()]
        atomic_write_text(old + '\n'.join(lines) + '\n\n', path)

    def write_log(self, msg: str, refresh: bool = False) -> None:
        """Print ``msg`` (without breaking progress bars) and append it to log.txt (rank 0 only)."""
        if not self.is_main:
            return
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
        if self._log_file is None:  # reopened after done()
            self._log_file = open(self.dir / 'log.txt', 'a')
        self._log_file.write(msg + '\n')
        self._log_file.flush()
        if refresh:
            os.fsync(self._log_file.fileno())

    def write_csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
        def cell(v):
            return f'{v:.6f}' if isinstance(v, float) else str(v)
        text = ','.join(header) + '\n' + ''.join(','.join(cell(v) for v in row) + '\n' for row in rows)
        if self.is_main:
            atomic_write_text(text, self.get_path(name))

    def plot(self, name: str, draw: Callable) -> None:
        """Draw a figure with ``draw(fig)`` and write it to ``<dir>/<name>`` as PNG (rank 0 only)."""
        if self.is_main:
            _plot_png(self.get_path(name), draw)

    def plot_psnr(self, psnr_log: torch.Tensor, sets: Sequence[str], scales: Sequence[int]) -> None:
        """One PNG per test set: PSNR per epoch, one line per scale."""
        epochs = np.arange(1, psnr_log.shape[0] + 1)
        for idx_data, name in enumerate(sets):
            if torch.isnan(psnr_log[:, idx_data]).all():
                continue

            def draw(fig, idx_data=idx_data, name=name):
                ax = fig.add_subplot()
                for idx_scale, s in enumerate(scales):
                    ax.plot(epochs, psnr_log[:, idx_data, idx_scale].numpy(), marker='.', label=f'x{s}')
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(f'SR on {name}')
                ax.set_xlabel('Epoch')
                ax.set_ylabel('PSNR (dB)')
                ax.grid(True)
                ax.legend()
            self.plot(f'psnr_{name}.png', draw)

    # -- images, written by a background thread

    def begin_background(self) -> None:
        if not self.is_main or self._writer is not None:
            return
        self._queue = queue.Queue(maxsize=64)
        self._writer_error = None

        def work():
            while True:
                item = self._queue.get()
                if item is None:
                    return
                path, array = item
                try:
                    iio.imwrite(path, array)
                except BaseException as e:  # reported by end_background in the main thread
                    self._writer_error = e

        self._writer = threading.Thread(target=work, name='image-writer', daemon=True)
        self._writer.start()

    def end_background(self) -> None:
        """Wait until every queued image is written; re-raise a write error."""
        if self._writer is None:
            return
        self._queue.put(None)
        self._writer.join()
        self._writer = self._queue = None
        if self._writer_error is not None:
            err, self._writer_error = self._writer_error, None
            raise err

    def save_results(self, dataset_name: str, filename: str, images: dict, scale: int) -> None:
        """Queue ``images`` ({'SR': t, 'LR': t, 'HR': t}, (1, C, H, W) in [0, rgb_range]) as PNGs."""
        if not self.is_main:
            return
        folder = self.get_path(f'results-{dataset_name}')
        folder.mkdir(exist_ok=True)
        for postfix, tensor in images.items():
            if tensor.numel() == 0:
                continue
            array = quantize(tensor[0], self.args.rgb_range).mul(255 / self.args.rgb_range).round()
            array = array.byte().permute(1, 2, 0).cpu().numpy()
            if array.shape[2] == 1:
                array = array[..., 0]
            path = folder / f'{filename}_x{scale}_{postfix}.png'
            if self._writer is None:
                iio.imwrite(path, array)
            else:
                self._queue.put((path, array))

    def done(self) -> None:
        """Finish: wait for queued images, flush and close log.txt."""
        self.end_background()
        if self._log_file is not None:
            self._log_file.flush()
            os.fsync(self._log_file.fileno())
            self._log_file.close()
            self._log_file = None
