"""Durable files: the one atomic writer and the one ``weights_only`` loader of the program.

Every file that a run or the data code reads back is written by :func:`atomic_write`: a temporary
file in the same folder, flushed and fsynced, then ``os.replace``. A process killed at any moment
leaves either the old or the new file, never a torn one; two processes writing the same file never
mix their contents.

Every ``.pt`` file is read by :func:`load_state`: ``torch.load(..., weights_only=True)`` onto the
CPU, with a :class:`errors.UserError` naming the file when it is missing, cut short, not a PyTorch
checkpoint, or holds pickled objects other than tensors and plain types.
"""

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from errors import UserError


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


def atomic_write(path: str | Path, write: Callable, mode: str = 'wb') -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it over ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its old content and the temporary
    file is removed (or, after a kill, left as a hidden ``.<name>.tmp-<pid>`` next to it). The
    folder must exist; an OSError (e.g. a read-only folder) reaches the caller.
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


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written ``path`` behind."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(text), mode='w')


def load_state(path: str | Path, *, what: str = 'checkpoint'):
    """``torch.load(path, map_location='cpu', weights_only=True)`` with errors that name the file.

    Args:
        path: the ``.pt`` file.
        what: how error messages introduce the file, e.g. ``'--pre_train'`` or ``'training state'``.

    Raises:
        UserError: ``'<what> <path>: <reason>'`` when the file is missing, is not a file, cannot be
            read, is not a PyTorch checkpoint, or holds pickled objects other than tensors.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f'{what} {path}: no such file')
    if not path.is_file():
        raise UserError(f'{what} {path}: not a file')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch.load raises many types (KeyError, EOFError, RuntimeError, ...) for bad files
        raise UserError(f'{what} {path}: {_explain_load_error(e)}') from None


def _explain_load_error(e: Exception) -> str:
    text = str(e)
    culprit = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    if culprit:
        return (f'refused: it holds pickled objects other than tensors ({culprit.group(1)}); only plain state_dicts '
                'are loaded (torch.load with weights_only=True)')
    if 'Weights only load failed' in text:
        detail = re.search(r'WeightsUnpickler error:\s*(.+)', text)
        return f'not a PyTorch checkpoint ({detail.group(1).strip() if detail else "unreadable pickle"})'
    if isinstance(e, EOFError):
        return 'not a PyTorch checkpoint (the file is empty or cut short)'
    if 'zip archive' in text:
        return 'not a PyTorch checkpoint or cut short (its zip archive is unreadable)'
    if isinstance(e, OSError):
        return f'cannot read it ({e.strerror or text})'
    return f'not a PyTorch checkpoint ({type(e).__name__}: {text.splitlines()[0] if text else "unreadable"})'
