"""Import an official EDSR-style code base (LCoAN's or NLSN's ``src/``) beside ours, without collisions.

Both code bases are EDSR-PyTorch descendants: they name their top-level modules alike (``option``,
``utility``, ``model``, ``data``, ``loss``, ``template``, ``trainer``) and import each other with
absolute names (``from model import common``). Putting a checkout on ``sys.path`` therefore makes
one code base import the other's modules, in either direction; worse, the official ``option.py``
parses ``sys.argv`` when imported and exits on the benchmark's own flags.

:class:`OfficialSource` imports the official modules inside a sealed block: every top-level name
of either code base is taken out of ``sys.modules`` first, ``sys.path`` holds the checkout but not
our ``src/`` or ``benchmarks/``, and importing ``option`` is refused (the benchmarks build the
official models from our parsed options or an explicit namespace, never from its parser). When the
block ends, the official modules move to private names under a prefix unique to the checkout
(``_official_lcoan_<hash>.model.lcoan``), and ours, and ``sys.path``, ``sys.argv``, come back as
they were. Objects built inside the block keep working afterwards: their modules hold references
to the official modules they imported.

    lcoan = OfficialSource(src, flag='--official_src', required='model/lcoan.py', label='lcoan')
    with lcoan.imports():
        net = lcoan.module('model.lcoan').make_model(args)   # lazy imports see official code too

For same-run baselines only: nothing of the official code is in this repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.abc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
SRC_DIR = BENCH_DIR.parent / 'src'
# The EDSR layout both code bases share; more names come from listing the two trees.
SHARED_NAMES = frozenset({'option', 'utility', 'model', 'data', 'loss', 'template', 'trainer'})
REFUSED = 'option'
_active: OfficialSource | None = None  # the source whose sealed block is open


def top_level_names(directory: Path) -> set[str]:
    """Names a directory contributes to the import system: ``*.py`` stems and sub-folders (packages,
    namespace packages included)."""
    if not directory.is_dir():
        return set()
    names = set()
    for entry in directory.iterdir():
        if entry.suffix == '.py':
            names.add(entry.stem)
        elif entry.is_dir() and entry.name.isidentifier():
            names.add(entry.name)
    return names


class _RefuseOption(importlib.abc.MetaPathFinder):
    """Refuses ``import option`` inside the sealed block, with a reason instead of the official parser's exit."""

    def __init__(self, src: Path) -> None:
        self.src = src

    def find_spec(self, fullname, path=None, target=None):
        if fullname == REFUSED:
            raise ImportError(f'{self.src}: the official code imported option.py, which parses sys.argv at '
                              'import time; the benchmarks pass the official models our parsed options instead',
                              name=fullname)
        return None


class OfficialSource:
    """One official checkout's ``src/`` folder, importable in sealed blocks (see the module docstring).

    Args:
        src: the checkout's ``src/`` folder.
        flag: the command-line flag that named it (for error messages).
        required: a file the folder must hold, relative to it (e.g. ``model/lcoan.py``).
        label: short name used in the private module prefix.
    """

    def __init__(self, src: str | os.PathLike, *, flag: str, required: str, label: str) -> None:
        path = Path(src).expanduser().resolve()
        if not (path / required).is_file():
            raise FileNotFoundError(f"{flag} {src}: no {required} there (expected the official checkout's src/ folder)")
        self.src = path
        self.prefix = f'_official_{label}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}'
        self.names = frozenset(SHARED_NAMES | top_level_names(path) | top_level_names(SRC_DIR)
                               | top_level_names(BENCH_DIR))

    def _isolated(self, name: str) -> bool:
        return name.partition('.')[0] in self.names

    @staticmethod
    def _ours(entry: str) -> bool:
        try:
            resolved = Path(entry or os.getcwd()).resolve()
        except OSError:
            return False
        return resolved in (SRC_DIR, BENCH_DIR)

    @contextlib.contextmanager
    def imports(self) -> Iterator[OfficialSource]:
        """Within the block, the official modules are importable under their own names, ours are not."""
        global _active
        if _active is not None:  # two blocks would hand each other the same top-level names
            raise RuntimeError(f'{self.src}: sealed import blocks do not nest (one for {_active.src} is open)')
        ours = {name: sys.modules.pop(name) for name in list(sys.modules) if self._isolated(name)}
        start = len(self.prefix) + 1
        for name in [n for n in sys.modules if n.startswith(self.prefix + '.')]:
            sys.modules[name[start:]] = sys.modules[name]  # an earlier block's official modules
        saved_path, saved_argv, saved_bytecode = sys.path[:], sys.argv[:], sys.dont_write_bytecode
        sys.path[:] = [str(self.src)] + [entry for entry in saved_path if not self._ours(entry)]
        sys.argv[:] = saved_argv[:1]  # nothing for a parser run at import time to trip over
        sys.dont_write_bytecode = True  # leave no __pycache__ in the user's checkout
        refuse = _RefuseOption(self.src)
        sys.meta_path.insert(0, refuse)
        importlib.invalidate_caches()
        _active = self
        try:
            yield self
        finally:
            _active = None
            sys.meta_path.remove(refuse)
            for name in [n for n in sys.modules if self._isolated(n)]:
                module = sys.modules.pop(name)
                if module is not None:
                    sys.modules[f'{self.prefix}.{name}'] = module
            sys.modules.update(ours)
            sys.path[:] = saved_path
            sys.argv[:] = saved_argv
            sys.dont_write_bytecode = saved_bytecode
            importlib.invalidate_caches()

    def module(self, name: str) -> ModuleType:
        """The official module ``name`` (e.g. ``'model.lcoan'``); imports it in a sealed block unless
        called inside one."""
        if _active is self:
            return importlib.import_module(name)
        loaded = sys.modules.get(f'{self.prefix}.{name}')
        if loaded is not None:
            return loaded
        with self.imports():
            return importlib.import_module(name)


def official_lcoan(src: str | os.PathLike) -> OfficialSource:
    """A checkout of YigangZhao/LCoAN's ``src/`` folder (``--official_src``)."""
    return OfficialSource(src, flag='--official_src', required='model/lcoan.py', label='lcoan')


def official_nlsn(src: str | os.PathLike) -> OfficialSource:
    """A checkout of HarukiYqM/Non-Local-Sparse-Attention's ``src/`` folder (``--nlsn_src``)."""
    return OfficialSource(src, flag='--nlsn_src', required='model/attention.py', label='nlsn')
