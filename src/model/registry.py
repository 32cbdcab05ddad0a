"""The architectures of this codebase: every ``model/<name>.py`` that defines ``ARCH``.

EDSR-PyTorch builds ``--model NAME`` with ``import_module('model.' + name.lower())``; here the
same file also describes itself (``model.spec.Architecture``), and this module finds all of them,
so option parsing, ``--help``, templates, checkpoint detection, tiling, benchmarks and tests loop
over one list instead of naming models. Adding an architecture is adding one file
(``docs/adding_a_model.md``).
"""

import functools
import importlib
import pkgutil
from pathlib import Path

from core.errors import UserError
from model.spec import Architecture, ModelFlag

# The model ``--model`` builds when none is given; listed first everywhere.
DEFAULT = 'LCoAN'
_PACKAGE = 'model'


@functools.cache
def architectures() -> dict[str, Architecture]:
    """Name -> architecture, the default first, then in alphabetical order (any letter case)."""
    found: dict[str, Architecture] = {}
    folder = Path(importlib.import_module(_PACKAGE).__file__).parent
    for info in pkgutil.iter_modules([str(folder)]):
        if info.name.startswith('_') or info.name in ('registry', 'spec'):
            continue
        arch = getattr(importlib.import_module(f'{_PACKAGE}.{info.name}'), 'ARCH', None)
        if not isinstance(arch, Architecture):
            continue
        if arch.name.lower() != info.name:
            raise ImportError(f'model/{info.name}.py declares ARCH.name {arch.name!r}: an architecture lives in '
                              f'model/<name in lower case>.py, as --model finds it')
        found[arch.name] = arch
    return dict(sorted(found.items(), key=lambda item: (item[0] != DEFAULT, item[0].lower())))


def names() -> tuple[str, ...]:
    return tuple(architectures())


def get(name: str) -> Architecture:
    """The architecture called ``name`` in any letter case; UserError listing the known ones otherwise."""
    lookup = {n.lower(): arch for n, arch in architectures().items()}
    arch = lookup.get(str(name).lower())
    if arch is None:
        raise UserError(f'--model {name!r}: allowed: {", ".join(names())}')
    return arch


def model_flags() -> dict[str, list[tuple[Architecture, ModelFlag]]]:
    """Flag name -> the architectures that use it (with their declaration), in the order first declared."""
    flags: dict[str, list[tuple[Architecture, ModelFlag]]] = {}
    for arch in architectures().values():
        for flag in arch.flags:
            users = flags.setdefault(flag.name, [])
            if users and users[0][1].type is not flag.type:
                raise TypeError(f'--{flag.name} is a {users[0][1].type.__name__} for {users[0][0].name} but a '
                                f'{flag.type.__name__} for {arch.name}')
            users.append((arch, flag))
    return flags
