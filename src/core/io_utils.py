"""Durable files: the one atomic writer and the one ``weights_only`` loader of the program.

Every file that a run or the data code reads back is written by :func:`atomic_write`: a temporary
file in the same folder, flushed and fsynced, then ``os.replace``. A process killed at any moment
leaves either the old or the new file, never a torn one; two processes writing the same file never
mix their contents.

A failed write raises the OSError of the operating system with the file's name, also when the
writer swallowed it (``torch.save`` turns a failed ``write`` into a RuntimeError of its zip writer):
:func:`write_error_cause` tells a full disk or a read-only folder from a bug.

Every ``.pt`` file is read by :func:`load_state`: ``torch.load(..., weights_only=True)`` onto the
CPU, with a :class:`errors.UserError` naming the file when it is missing, cut short, not a PyTorch
checkpoint (a text file, a plain pickle), or holds pickled objects other than tensors and plain
types (the message names the function or class the pickle refers to; nothing of it is run).
A ``.safetensors`` file (by its name or its header) is read with the ``safetensors`` package, which
holds nothing but tensors. :func:`save_weights` writes a state_dict as either, by the file's extension.
"""

import errno
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from core.errors import UserError

# The errors of a write that the user fixes outside this program (space, permissions, quota).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


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


def make_folder_for_data(folder: str | Path) -> None:
    """Make ``folder`` (and its parents) for files derived from a data set; PermissionError when the
    nearest existing folder on the way has no write bit. The kernel lets root write into a folder
    made read-only with ``chmod a-w``, but whoever did that meant the data to stay untouched, so the
    caller goes to its per-user cache instead."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if existing.is_dir() and not existing.stat().st_mode & 0o222:
        raise PermissionError(errno.EACCES, 'read-only folder (no write permission bit)', str(existing))
    folder.mkdir(parents=True, exist_ok=True)


def atomic_write(path: str | Path, write: Callable, mode: str = 'wb') -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it over ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its old content and the temporary
    file is removed (or, after a kill, left as a hidden ``.<name>.tmp-<pid>`` next to it). The
    folder must exist; an OSError (e.g. a read-only folder) reaches the caller.
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    recorder = None
    try:
        with open(tmp, mode) as f:
            recorder = _WriteRecorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error is not None else e
        if isinstance(cause, OSError):
            cause.filename = str(path)  # the file meant, not its temporary name
            if cause is not e:
                raise cause from None
        raise
    _fsync_dir(path.parent)


class _WriteRecorder:
    """A file object that remembers the first OSError of its ``write``: torch.save reports a failed write
    as a RuntimeError of its zip writer ('unexpected pos ...'), which hides a full disk."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def write_error_cause(e: BaseException) -> str | None:
    """'no space left on device', 'read-only file system', ... for a write the user must fix; else None."""
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return os.strerror(e.errno).lower()
    return None


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written ``path`` behind."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(text), mode='w')


SAFETENSORS_SUFFIX = '.safetensors'
# Extensions save_weights writes with torch.save.
TORCH_SUFFIXES = ('.pt', '.pth', '.ckpt')


def save_weights(state: dict, path: str | Path) -> None:
    """Write the state_dict ``state`` atomically: ``.safetensors`` with safetensors, ``.pt``/``.pth``/``.ckpt``
    with ``torch.save``; every tensor as a contiguous CPU copy (channels_last weights included: safetensors
    refuses strided tensors, and no copy shares storage with another). ValueError for another extension."""
    path = Path(path)
    plain = {k: v.detach().to('cpu').clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save
        atomic_write(path, lambda f: f.write(save(plain, metadata={'format': 'pt'})))
    elif path.suffix in TORCH_SUFFIXES:
        atomic_save(plain, path)
    else:
        raise ValueError(f'{path}: weights are written as {SAFETENSORS_SUFFIX} or {", ".join(TORCH_SUFFIXES)}')


def _is_safetensors(path: Path, head: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    if len(head) < 9 or head[8:9] != b'{':
        return False
    return 2 <= int.from_bytes(head[:8], 'little') <= path.stat().st_size - 8


def _load_safetensors(path: Path, what: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{what} {path}: not a readable safetensors file ({text})') from None


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
        with open(path, 'rb') as f:
            head = f.read(16)
    except OSError as e:
        raise UserError(f'{what} {path}: cannot read it ({e.strerror or e})') from None
    if _is_safetensors(path, head):
        return _load_safetensors(path, what)
    try:
        with warnings.catch_warnings():
            # A plain pickle of another protocol is refused below with a message of ours.
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch.load raises many types (KeyError, EOFError, RuntimeError, ...) for bad files
        raise UserError(f'{what} {path}: {_explain_load_error(path, e)}') from None


# What a pickle of tensors and plain containers refers to; anything else named in a pickle torch
# refused is reported as the culprit.
_PLAIN_GLOBALS = re.compile(r'(torch|collections|_codecs|numpy)(\.|$)')
_HEAD_BYTES = 512


def _explain_load_error(path: Path, e: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``e``, in words that do not depend on
    torch's wording (which changes between releases): from the file's own bytes where possible."""
    if isinstance(e, OSError) and e.filename is not None:  # opening or reading the file failed
        return f'cannot read it ({e.strerror or e})'
    try:
        size = path.stat().st_size
        with open(path, 'rb') as f:
            head = f.read(_HEAD_BYTES)
    except OSError as read_error:
        return f'cannot read it ({read_error.strerror or read_error})'
    if size == 0:
        return 'an empty file, not a PyTorch checkpoint'
    culprit = _refused_global(path, head, str(e)) if isinstance(e, pickle.UnpicklingError) else None
    if culprit:
        return (f'refused: it holds a pickled reference to {culprit}, not only tensors (nothing of it was run); '
                'only plain state_dicts are loaded (torch.load with weights_only=True)')
    if head.startswith(b'PK\x03\x04'):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            return (f'cut short or damaged: its zip archive is incomplete ({size} bytes); the file was not '
                    'completely written or copied')
        return f'a damaged PyTorch checkpoint ({_first_line(e)})'
    if _is_text(head):
        first = head.decode('utf-8', errors='replace').strip().splitlines()[0][:40] if head.strip() else ''
        return f'a text file, not a PyTorch checkpoint (it starts with {first!r})'
    if head.startswith(b'\x80'):
        return 'a Python pickle but not a PyTorch checkpoint (torch.save writes a zip archive)'
    return 'not a PyTorch checkpoint (neither the zip archive of torch.save nor a pickle)'


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the head is still text.
        try:
            text = head[:-3].decode('utf-8')
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in '\t\r\n\f' for c in text)


def _refused_global(path: Path, head: bytes, message: str) -> str | None:
    """The module.name a refused pickle refers to: from torch's message if it names one, else from the
    pickle's own opcodes (read with pickletools, which never runs anything)."""
    named = re.search(r'GLOBAL\s+([A-Za-z_][\w.]*)', message)
    if named:
        return named.group(1)
    try:
        if head.startswith(b'PK\x03\x04'):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith('data.pkl')), None)
                data = archive.read(member) if member else b''
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return None
    for name in _pickle_globals(data):
        if not _PLAIN_GLOBALS.match(name):
            return name
    return None


def _pickle_globals(data: bytes) -> list[str]:
    """Every module.name referenced by the pickles in ``data`` (several follow each other in torch's legacy
    format), in order; stops at the first unreadable opcode."""
    found, stream = [], io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ('GLOBAL', 'INST'):
                    found.append(arg.replace(' ', '.'))
                elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                    found.append(f'{strings[-2]}.{strings[-1]}')
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # genops raises ValueError, EOFError, ... on bytes that are no pickle
            break
    return found
