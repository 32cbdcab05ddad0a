"""A run's ``config.txt``: the options it ran with, written by the run folder and read back here.

Per start of a run, a block is appended: the time, ``command: <the command line>``, a blank line, then one
``key: value`` line per option (its Python value as ``str`` writes it). The official EDSR code writes blocks of
a time and the ``key: value`` lines, which read the same way. What reads it: ``--load RUN --resume`` (the run's
options), and the weights of a run (the options its weights do not record, beside them or above their
``model/`` folder).
"""

import ast
import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.io_utils import atomic_write_text
from model import registry
from model.checkpoint.detect import Detected

RUN_CONFIG = 'config.txt'
# Attributes of the parsed options that are no option: the weights read at start-up (``--pre_train`` and
# ``--load`` name their file).
NOT_RECORDED = frozenset({'checkpoint'})


def write(path: Path, options: Mapping[str, Any], command: str) -> None:
    """Append the block of a run's start to the config.txt ``path``: ``options`` as run with, and its ``command``."""
    old = path.read_text() if path.exists() else ''
    now = datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')
    lines = [now, 'command: ' + command, '']
    lines += [f'{key}: {value}' for key, value in options.items() if key not in NOT_RECORDED]
    atomic_write_text(old + '\n'.join(lines) + '\n\n', path)


def written_here(path: Path) -> bool:
    """Whether ``path`` is a config.txt that this program wrote (its first block's ``command:`` line).

    Raises:
        OSError: it cannot be read.
    """
    lines = path.read_text(errors='replace').splitlines()[:3]
    return len(lines) >= 2 and lines[1].startswith('command: ')


def beside(weights: str | Path) -> Path | None:
    """The config.txt of the run that saved ``weights``: beside it, or above it in ``<run>/model/``."""
    weights = Path(weights)
    folders = [weights.parent] + ([weights.parent.parent] if weights.parent.name == 'model' else [])
    return next((f / RUN_CONFIG for f in folders if (f / RUN_CONFIG).is_file()), None)


def read(path: str | Path) -> dict[str, Any]:
    """The options of the last run recorded in a config.txt, as Python values where they read as one (``[2]``,
    ``0.1``, ``None``), else as text; empty for no run. ``'_truncated'`` is set when the last block of ours
    lacks its options (a file cut short)."""
    lines = Path(path).read_text(errors='replace').splitlines()
    ours = any(line.startswith('command: ') for line in lines)
    blocks: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith('command: ') or (not ours and line.strip() and ': ' not in line):
            blocks.append({})  # ours: the command line starts a block; the official code's: its time
        elif ': ' in line and (blocks or not ours):
            if not blocks:
                blocks.append({})
            key, text = line.split(': ', 1)
            try:
                blocks[-1][key] = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                blocks[-1][key] = text
    last = blocks[-1] if blocks else {}
    if ours and 'model' not in last:
        last['_truncated'] = True
    return last


def same(theirs: Any, ours: Any) -> bool:
    """Whether two values of one option agree: numbers by value, text in any letter case, ``[2]`` as 2."""
    if isinstance(theirs, list) and len(theirs) == 1:  # config.txt's scale: [2]
        theirs = theirs[0]
    if isinstance(ours, str) or isinstance(theirs, str):
        return str(theirs).lower() == str(ours).lower()
    try:
        return float(theirs) == float(ours)
    except (TypeError, ValueError):
        return False


def _as_type_of(value: Any, like: Any) -> Any:
    """``value`` as the type of the published value ``like``; ValueError if it is not one."""
    if isinstance(like, str) and isinstance(value, str):
        return value
    if isinstance(like, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(like, int) and value != int(value):
            raise ValueError(value)
        return type(like)(value)
    raise ValueError(value)


def for_weights(config: Path, detected: Detected) -> tuple[dict[str, Any], str]:
    """The options ``config`` gives that the weights do not record (and the run's ``seed``), if it describes
    the network of ``detected``; else ``({}, why not)``. A value that is no value of its option is left out,
    and the note says so."""
    try:
        run = read(config)
    except OSError as e:
        return {}, f'{config} not read ({e.strerror or e})'
    if run.get('_truncated'):
        return {}, f'{config} not used: the options of its last run are missing (the file was cut short?)'
    model = run.get('model')
    if not run or not isinstance(model, str):
        return {}, ''  # not a run's config.txt
    if model.lower() != detected.model.lower():
        return {}, f'{config} not used: it is a run of {model}, the weights are {detected.model}\'s'
    for key, value in detected.options.items():
        if run.get(key) is not None and not same(run[key], value):
            return {}, f'{config} not used: its {key} is {run[key]}, the weights\' {value}'
    values, bad = {}, []
    positive = {f.name for f in registry.get(detected.model).flags if f.must_be_positive} | {'rgb_range'}
    for key, published in detected.assumed.items():
        if run.get(key) is not None:
            try:
                values[key] = _as_type_of(run[key], published)
                if key in positive and not values[key] > 0:
                    raise ValueError(run[key])
            except ValueError:
                values.pop(key, None)
                bad.append(f'{key}: {run[key]}')
    if isinstance(run.get('seed'), int) and not isinstance(run['seed'], bool):
        values['seed'] = run['seed']
    note = f'{config}: not used: ' + ', '.join(bad) + ' (not a value of the option)' if bad else ''
    return values, note
