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

from torch import nn

from core.errors import UserError
from model.spec import Architecture, ModelFlag

# The model ``--model`` builds when none is given; listed first everywhere.
DEFAULT = 'LCoAN'
_PACKAGE = 'model'


@functools.cache
def _scan() -> tuple[dict[str, Architecture], dict[str, str]]:
    """The architectures (name -> architecture), and the files of ``model/`` that define none because they are
    broken (``model/<file>.py`` -> why): one bad file must not take every command down, ``--help`` included."""
    found: dict[str, Architecture] = {}
    files: dict[str, str] = {}
    broken: dict[str, str] = {}
    folder = Path(importlib.import_module(_PACKAGE).__file__).parent
    for info in pkgutil.iter_modules([str(folder)]):
        if info.name.startswith('_') or info.name in ('registry', 'spec'):
            continue
        where = f'{_PACKAGE}/{info.name}.py'
        try:
            arch = getattr(importlib.import_module(f'{_PACKAGE}.{info.name}'), 'ARCH', None)
        except Exception as e:  # noqa: BLE001 - whatever the file does wrong, the others still work
            broken[where] = f'{type(e).__name__}: {e}'
            continue
        if not isinstance(arch, Architecture):
            continue
        if arch.name.lower() != info.name:
            broken[where] = (f'declares ARCH.name {arch.name!r}: an architecture lives in model/<name in lower '
                             'case>.py, as --model finds it')
            continue
        found[arch.name] = arch
        files[arch.name] = where
    ordered = dict(sorted(found.items(), key=lambda item: (item[0] != DEFAULT, item[0].lower())))
    for name, why in _type_clashes(ordered).items():
        broken[files[name]] = why
        del ordered[name]
    return ordered, broken


def _type_clashes(found: dict[str, Architecture]) -> dict[str, str]:
    """The architectures that give a flag another type than most of those that have it do (one parser
    flag has one type): name -> why."""
    users: dict[str, list[tuple[Architecture, ModelFlag]]] = {}
    for arch in found.values():
        for flag in arch.flags:
            users.setdefault(flag.name, []).append((arch, flag))
    clashes = {}
    for name, used in users.items():
        types = [flag.type for _, flag in used]
        common = max(dict.fromkeys(types), key=types.count)  # ties: the type of the first (the default model)
        owner = next(arch for arch, flag in used if flag.type is common)
        for arch, flag in used:
            if flag.type is not common and arch.name not in clashes:
                clashes[arch.name] = (f'--{name} is {flag.type.__name__} here but {common.__name__} for '
                                      f'{owner.name}')
    return clashes


def architectures() -> dict[str, Architecture]:
    """Name -> architecture, the default first, then in alphabetical order (any letter case)."""
    return _scan()[0]


def broken() -> dict[str, str]:
    """``model/<file>.py`` -> why it defines no architecture (it fails to import, or its ``ARCH`` clashes)."""
    return _scan()[1]


def broken_note() -> str:
    """One sentence naming the broken files of ``model/``, or ''."""
    if not broken():
        return ''
    return 'Not loaded: ' + '; '.join(f'{file}: {why}' for file, why in broken().items()) + '.'


def names() -> tuple[str, ...]:
    return tuple(architectures())


def get(name: str) -> Architecture:
    """The architecture called ``name`` in any letter case; UserError listing the known ones otherwise."""
    lookup = {n.lower(): arch for n, arch in architectures().items()}
    arch = lookup.get(str(name).lower())
    if arch is None:
        file = f'{_PACKAGE}/{str(name).lower()}.py'
        if file in broken():
            raise UserError(f'{file}: {broken()[file]}')
        note = f' ({broken_note()})' if broken() else ''
        raise UserError(f'--model {name!r}: allowed: {", ".join(names())}{note}')
    return arch


def build(name: str, **options) -> nn.Module:
    """The network ``name`` (any letter case) for ``options`` (:meth:`Architecture.build`, which names them).

    Raises:
        TypeError: a name that is no option of ``name``'s architecture nor a flag of another.
        UserError: a flag of another architecture, or a bad value, in the words of the command line.
    """
    arch = get(name)
    for flag, value in options.items():
        if flag not in arch.defaults and flag in model_flags():
            raise arch.no_such_option(flag, value)
    return arch.build(**options)


def model_flags() -> dict[str, list[tuple[Architecture, ModelFlag]]]:
    """Flag name -> the architectures that use it (with their declaration), in the order first declared."""
    flags: dict[str, list[tuple[Architecture, ModelFlag]]] = {}
    for arch in architectures().values():  # their types agree (an architecture whose do not is not loaded)
        for flag in arch.flags:
            flags.setdefault(flag.name, []).append((arch, flag))
    return flags
