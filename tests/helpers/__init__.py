"""Code the tests share (imported as ``helpers`` and ``helpers.<module>``; tests never import each other
or ``conftest``): the repository's folders, the Sample data and ``main.py`` in this process or another."""

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
SRC = ROOT / 'src'
# Data written by the official code bases (weights, inputs, outputs) and their state_dict key listings.
FIXTURES = TESTS / 'fixtures'
# Read-only material beside the checkout (real Set5/Set14, T91..., official key listings); tests skip without it.
SHARED = ROOT.parent / 'shared'

# main.py in a subprocess: one thread per process (tests run several), unbuffered output to read live.
MAIN_ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}

_sample: list[Path] = []


def sample_data(dest: Path | None = None) -> Path:
    """The built-in Sample data set, written once per test session (seconds); with ``dest``, a copy there
    unless ``dest`` exists already (runs write their ``--ext sep`` cache beside the images)."""
    if not _sample:
        from data import sample
        folder = Path(tempfile.mkdtemp(prefix='lcoan-sample-'))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        sample.ensure_sample(folder, say=lambda _: None)
        _sample.append(folder)
    if dest is None:
        return _sample[0]
    if not dest.exists():
        shutil.copytree(_sample[0], dest)
    return dest


def main_command(base: Path, *flags) -> list[str]:
    """``python main.py FLAGS`` with data under ``base/data`` (the Sample set, made in moments) and runs under
    ``base/exp`` (run from src/)."""
    sample_data(base / 'data')
    return [sys.executable, 'main.py', *map(str, flags), '--dir_data', str(base / 'data'),
            '--save_dir', str(base / 'exp')]


def run_main(base: Path, *flags, timeout: int = 600) -> subprocess.CompletedProcess:
    """main.py in a subprocess: for what is about processes (signals, exit statuses, several processes)."""
    return subprocess.run(main_command(base, *flags), cwd=SRC, env=MAIN_ENV, capture_output=True, text=True,
                          timeout=timeout)


def main_here(base: Path, *flags) -> subprocess.CompletedProcess:
    """What :func:`run_main` gives, from ``main.main`` in this process (:func:`main_in_process`)."""
    return main_in_process(*main_command(base, *flags)[2:])


def main_in_process(*argv) -> subprocess.CompletedProcess:
    """``python main.py ARGV``'s status (1 and the traceback for an uncaught exception), stdout and stderr,
    from ``main.main`` in this process: no new interpreter and torch import. One thread, as in
    :data:`MAIN_ENV`, so that runs are bit-identical to those in a subprocess; the settings a run changes
    process-wide are restored."""
    import torch

    import main
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    benchmark, environ = torch.backends.cudnn.benchmark, dict(os.environ)
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()  # the filters a new process starts with
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter('ignore', category)
            try:
                status = main.main(argv)
            except SystemExit as e:  # argparse's usage errors
                status = e.code if isinstance(e.code, int) else 1
            except Exception:  # as Python reports it, with status 1
                traceback.print_exc()
                status = 1
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())
