"""The run folder ``<save_dir>/<save>/``: configuration, log, CSV tables, plots and result images.

Only the main process (rank 0) writes. Every file a resumed run reads back is written atomically
(:mod:`io_utils`). The checkpoints themselves are written by the trainer (:mod:`training.state`), the
figures drawn by :mod:`training.plots`, the result images converted and written in the background by
:mod:`training.images`. Which flag combinations make sense is checked with the options
(:mod:`training.run_flags`); the checks here are those that need the file system.
"""

import argparse
import contextlib
import datetime
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import imageio.v3 as iio
import torch
from tqdm import tqdm

from core import distributed
from core.errors import UserError
from core.io_utils import atomic_write_text
from model.checkpoint import run_config
from training import plots
from training.images import ImageWriter, to_uint8

# The file that defines a run's resume point (see training.state).
TRAINING_STATE = 'training_state.pt'


def _check_run_name(flag: str, name: str) -> None:
    # The folder may be deleted by --reset: it must stay inside --save_dir.
    if not name or name in ('.', '..') or '/' in name or '\\' in name:
        raise UserError(f'--{flag} {name!r}: a run name, not a path (runs live under --save_dir)')


def interrupted_message(args: argparse.Namespace | None) -> str:
    """The one line for Ctrl-C: how to continue the run (``args`` is None when parsing was interrupted)."""
    if args is None or args.test_only:
        return 'interrupted'
    name = args.load or args.save
    if (Path(args.save_dir) / name / TRAINING_STATE).exists():
        return f'interrupted; resume with --load {name} --resume -1'
    return (f'interrupted during the first epoch, before anything was saved: nothing to resume; start over with '
            f'--save {name} --reset')


def how_to_go_on(args: argparse.Namespace) -> str:
    """What to do after a run stopped by a lost process: resume it, or start it over."""
    if args.test_only:
        return 'evaluate again'
    name = args.load or args.save
    if (Path(args.save_dir) / name / TRAINING_STATE).exists():
        return f'resume with --load {name} --resume -1'
    return f'nothing was saved yet: start over with --save {name} --reset'


def _made_by_this_program(folder: Path) -> bool:
    """Whether --reset may delete ``folder``: it holds the config.txt this program writes, or nothing but
    what a run creates before its config.txt (an empty model/ folder, an empty log.txt)."""
    config = folder / run_config.RUN_CONFIG
    if config.is_file():
        try:
            return run_config.written_here(config)
        except OSError:
            return False
    entries = list(folder.iterdir())
    return all((e.name == 'model' and e.is_dir() and not any(e.iterdir()))
               or (e.name == 'log.txt' and e.is_file() and e.stat().st_size == 0) for e in entries)


def _holds_only_logs(folder: Path) -> bool:
    """Whether ``folder`` holds no file but its config.txt and log.txt (empty folders aside)."""
    try:
        return all(p.parent == folder and p.name in ('config.txt', 'log.txt')
                   for p in folder.rglob('*') if not p.is_dir())
    except OSError:
        return False


class RunFolder:
    """The run folder ``<save_dir>/<save>/`` (or ``<save_dir>/<load>/`` with --load) and its files.

    Layout::

        config.txt  log.txt  training_state.pt  loss_log.csv  psnr_log.csv  loss_<term>.png
        psnr_<set>.png  metrics_<set>_x<scale>.csv  results-<set>/<img>_x<s>_{SR,LR,HR}.png
        model/model_latest.pt  model/model_best.pt  model/model_<epoch>.pt  state/training_state_<epoch>.pt

    Positional argument, as main.py and EDSR pass it.

    Args:
        args: options from :func:`option.parse_args` (whose flag combinations
            :func:`training.run_flags.check_run_flags` has checked); uses ``save_dir, save, load, resume,
            reset, test_only, rgb_range`` and writes all of them to config.txt.
        open_now: start writing at once, as EDSR's checkpoint does; False: only check the folder (UserError:
            a folder of the user's, a run that exists already, nothing to resume) and hold the log lines until
            :meth:`open`.

    ``run_dir`` is the run (its checkpoints); ``dir`` is where this invocation writes: the run itself,
    or, for ``--test_only`` on a folder that holds a training run, a new ``test-<date>-<time>/`` in it.
    """

    def __init__(self, args: argparse.Namespace, *, open_now: bool = True) -> None:
        self.args = args
        self.is_main = distributed.is_main()
        # The run: its checkpoints (model/, training_state.pt). ``dir`` is where this invocation writes:
        # the run itself, except for a --test_only evaluation of a training run (see _output_dir).
        self.run_dir = self._run_dir(args)
        self._check_folder()
        self.dir = self._output_dir()

        self._log_file = None
        self._writer: ImageWriter | None = None
        self._held: list[str] | None = []  # log lines written before open(), for log.txt
        self._created = False  # whether open() made ``dir``
        if self.dir != self.run_dir:
            self.write_log(f'--test_only: this evaluation writes to {self.dir}; the training run\'s own '
                           f'results in {self.run_dir} are kept')
        if open_now:
            self.open()

    def open(self) -> None:
        """Start writing: ``--reset`` deletes the old run now, then the folder is made and ``config.txt`` and
        ``log.txt`` (with the lines logged so far) are written. ``main.py`` makes the checkpoint with
        ``open_now=False`` and calls this once every start-up check (data, weights, loss, resume) has passed,
        so a run that cannot start deletes and writes nothing. Calling it again does nothing."""
        if self._held is None:
            return
        if self.args.reset:
            self._reset()
        held, self._held = self._held, None
        if not self.is_main:
            return
        self._created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.args.test_only:
            (self.dir / 'model').mkdir(exist_ok=True)
            # Temporary files of a killed writer (atomic_write) are never read: remove them (not in an
            # evaluation, which may run beside the training that is writing them).
            for folder in (self.dir, self.dir / 'model', self.dir / 'state'):
                for stale in folder.glob('.*.tmp-*'):
                    stale.unlink(missing_ok=True)
        self._log_file = open(self.dir / 'log.txt', 'a')
        self._write_config()
        self._log_file.write(''.join(msg + '\n' for msg in held))
        self._log_file.flush()

    def _check_folder(self) -> None:
        """The checks of the run folder that need the file system; nothing is written or deleted here."""
        args = self.args
        if args.reset:
            self._check_reset()
        elif not args.test_only and args.resume == 0 and (self.run_dir / TRAINING_STATE).exists():
            flag, name = ('load', args.load) if args.load else ('save', args.save)
            raise UserError(f'--{flag} {name!r}: {self.run_dir} holds a run already; continue it with '
                            f'--load {name} --resume -1, or start it over with --reset')
        elif self.run_dir.exists() and not self.run_dir.is_dir():
            flag, name = ('load', args.load) if args.load else ('save', args.save)
            raise UserError(f'--{flag} {name!r}: {self.run_dir} is a file, not a run folder; choose another --{flag}')
        elif self.run_dir.is_dir() and not _made_by_this_program(self.run_dir):
            # Writing into it would adopt it: a later --reset would delete the user's files.
            flag, name = ('load', args.load) if args.load else ('save', args.save)
            raise UserError(f'--{flag} {name!r}: {self.run_dir} holds files but no run of this program (no '
                            f'config.txt written by main.py); choose another --{flag}, or empty the folder')
        elif args.resume == -1 and not args.test_only:
            self._check_something_to_resume()

    @staticmethod
    def _run_dir(args: argparse.Namespace) -> Path:
        if not args.load:
            _check_run_name('save', args.save)
            return Path(args.save_dir) / args.save
        _check_run_name('load', args.load)
        folder = Path(args.save_dir) / args.load
        if not folder.is_dir():
            raise UserError(f'--load {args.load!r}: no run folder {folder}')
        return folder

    def _check_reset(self) -> None:
        """Whether --reset may delete the run folder: this program made it."""
        folder = self.run_dir
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir() or folder.is_symlink():
                raise UserError(f'--reset: {folder} is not a run folder (a file or a link); not deleting it')
            if not _made_by_this_program(folder):
                raise UserError(f'--reset: {folder} holds files but no config.txt of a run of this program; not '
                                'deleting it (choose another --save, or delete the folder yourself)')

    def _reset(self) -> None:
        """Delete the run folder for --reset (every rank checked it when the checkpoint was made; rank 0
        checks again, for files put there since, and deletes)."""
        distributed.barrier()
        if self.is_main and self.run_dir.exists():
            self._check_reset()
            shutil.rmtree(self.run_dir)
        distributed.barrier()

    def _check_something_to_resume(self) -> None:
        if (self.run_dir / TRAINING_STATE).exists() or (self.run_dir / 'model' / 'model_latest.pt').exists():
            return
        name = self.args.load
        raise UserError(f'--load {name} --resume -1: {self.run_dir} has no finished epoch yet (the run stopped during '
                        f'its first epoch): nothing to resume; start it over with --save {name} --reset')

    def _output_dir(self) -> Path:
        """The run folder; for --test_only on a folder holding a training run, a new ``test-<time>`` in it,
        so that an evaluation never overwrites the run's own metrics and images."""
        run = self.run_dir
        holds_training = (run / TRAINING_STATE).exists() or (run / 'model' / 'model_latest.pt').exists()
        if not (self.args.test_only and holds_training):
            return run
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
        folder, n = run / f'test-{stamp}', 1
        while folder.exists():
            n += 1
            folder = run / f'test-{stamp}-{n}'
        return folder

    # -- paths and text logs

    def get_path(self, *parts) -> Path:
        return self.dir.joinpath(*map(str, parts))

    def _write_config(self) -> None:
        run_config.write(self.get_path(run_config.RUN_CONFIG), vars(self.args), ' '.join(sys.argv))

    def write_log(self, msg: str, refresh: bool = False) -> None:
        """Print ``msg`` (without breaking progress bars) and append it to log.txt (rank 0 only)."""
        if not self.is_main:
            return
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
        if self._held is not None:  # before open(): log.txt gets it then
            self._held.append(msg)
            return
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
            plots.plot_png(self.get_path(name), draw)

    def write_psnr_log(self, psnr_log: torch.Tensor, ssim_log: torch.Tensor, sets: Sequence[str], scale: int) -> None:
        """``psnr_log.csv`` (a row per epoch and set) and one ``psnr_<set>.png`` per set with ground truth.

        Args:
            psnr_log, ssim_log: (epochs, len(sets)); NaN for sets without ground truth.
            sets: the test set names.
            scale: the run's scale, shown in the CSV and the plots' legends.
        """
        rows = [[epoch + 1, name, scale, float(psnr_log[epoch, i]), float(ssim_log[epoch, i])]
                for epoch in range(psnr_log.shape[0]) for i, name in enumerate(sets)]
        self.write_csv('psnr_log.csv', ['epoch', 'set', 'scale', 'psnr', 'ssim'], rows)
        for i, name in enumerate(sets):
            if not torch.isnan(psnr_log[:, i]).all():
                self.plot(f'psnr_{name}.png', plots.psnr_curve(psnr_log[:, i], name, scale))

    # -- images, written by a background thread between begin_background and end_background

    def begin_background(self) -> None:
        if self.is_main and self._writer is None:
            self._writer = ImageWriter()

    def end_background(self) -> None:
        """Wait until every queued image is written; re-raise a write error."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def save_results(self, dataset_name: str, filename: str, images: dict, scale: int) -> None:
        """Write ``images`` ({'SR': t, 'LR': t, 'HR': t}, (1, C, H, W) in [0, rgb_range]) as PNGs."""
        if not self.is_main:
            return
        folder = self.get_path(f'results-{dataset_name}')
        folder.mkdir(exist_ok=True)
        for postfix, tensor in images.items():
            if tensor.numel() == 0:
                continue
            array = to_uint8(tensor[0], self.args.rgb_range)
            path = folder / f'{filename}_x{scale}_{postfix}.png'
            if self._writer is None:
                iio.imwrite(path, array)
            else:
                self._writer.put(path, array)

    def abort(self) -> None:
        """After an error: stop the image writer and close log.txt, ignoring their own errors (a full disk).
        An evaluation's folder made by this invocation is removed if it holds nothing but config.txt and
        log.txt (the evaluation failed before scoring anything)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(BaseException):
                writer.close()
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None
        if self._created and self.args.test_only and _holds_only_logs(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
            self._created = False

    def done(self) -> None:
        """Finish: wait for queued images, flush and close log.txt."""
        self.end_background()
        if self._log_file is not None:
            self._log_file.flush()
            os.fsync(self._log_file.fileno())
            self._log_file.close()
            self._log_file = None
