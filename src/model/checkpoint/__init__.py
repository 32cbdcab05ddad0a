"""A weights file and the network options it implies, read once: :func:`read` returns a :class:`Checkpoint`.

    from model import checkpoint
    ckpt = checkpoint.read('LCoAN_x4.pt', what='--pre_train', given={'window_size': 96})
    ckpt.options      # {'model': 'LCoAN', 'scale': 4, 'n_feats': 128, ..., 'window_size': 96, ...}
    ckpt.sources      # {'model': 'weights', ..., 'window_size': 'flag', 'res_scale': 'assumed'}
    ckpt.load_into(network, log=print)

The weights record the architecture and most options (:mod:`.detect`: key names and shapes); the options
they do not record (attention window, ``res_scale``, ``rgb_range`` without a mean shift ...) come from the
flags given, else from the config.txt of the run that saved them (:mod:`.run_config`), else the published
values. The file is read by :mod:`.files`, another code base's layout renamed to ours by :mod:`.layouts`,
and the state_dict copied into a network by :mod:`.loading`.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.checkpoint import files, layouts, loading, run_config
from model.checkpoint.detect import Detected, identify
from model.spec import Layout, UnknownCheckpoint

# Where an option of a checkpoint comes from (``Checkpoint.sources``).
WEIGHTS = 'weights'  # recorded in the weights (their key names and shapes)
FLAG = 'flag'  # given by the caller: a command-line flag, an override
CONFIG = 'config.txt'  # the config.txt of the run that saved the weights
ASSUMED = 'assumed'  # the published value

__all__ = ['ASSUMED', 'CONFIG', 'FLAG', 'WEIGHTS', 'Checkpoint', 'Detected', 'UnknownCheckpoint', 'read']


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A weights file as read: its state_dict in our layout and what it says about its network.

    Attributes:
        path: the file.
        what: how messages introduce it (``'--pre_train'``, ``'weights'``).
        state: its state_dict, in our key names.
        detected: what the weights record (None when read without recognising the architecture).
        options: option name -> value of every option of its network: ``model``, those the weights
            record, those they do not (flag, config.txt or published value).
        sources: option name -> where its value comes from: :data:`WEIGHTS`, :data:`FLAG`, :data:`CONFIG`
            or :data:`ASSUMED`.
        config: the run's config.txt, when one lies beside the weights (or above their ``model/`` folder).
        seed: the run's ``--seed``, from its config.txt; None without one.
        description: one line saying which option came from where (empty when not recognised).
        notes: what reading did to the keys (a wrapper's prefix removed, another layout renamed), for the log.
    """

    path: Path
    what: str
    state: dict[str, torch.Tensor]
    detected: Detected | None
    options: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    config: Path | None = None
    seed: int | None = None
    description: str = ''
    notes: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """The file as messages name it: ``'--pre_train LCoAN_x2.pt'``."""
        return f'{self.what} {self.path}'

    def __repr__(self) -> str:
        return f'Checkpoint({self.source!r}, {self.detected.describe() if self.detected else "not recognised"})'

    def records_other(self, key: str, value: Any) -> bool:
        """Whether the weights record option ``key`` with a value other than ``value``."""
        recorded = self.detected.options.get(key) if self.detected else None
        return recorded is not None and not run_config.same(value, recorded)

    def load_into(self, network: nn.Module, *, log: Callable[[str], None],
                  allow_new_upsampler: bool = True) -> list[str]:
        """Copy the weights into ``network`` (:func:`loading.load_into`: strictly, but for a fresh upsampler
        when ``allow_new_upsampler``), logging what reading did and how many tensors were loaded.

        Returns:
            The checkpoint keys that were not loaded.
        """
        for note in self.notes:
            log(note)
        skipped = loading.load_into(network, self.state, source=self.source, log=log,
                                    allow_new_upsampler=allow_new_upsampler)
        log(f'Loaded {self.source} ({len(self.state) - len(skipped)} tensors).')
        return skipped


def read(path: str | Path, *, what: str = 'checkpoint', given: Mapping[str, Any] | None = None,
         layout: str | None = None, recognise: bool = True, for_flags: bool = False) -> Checkpoint:
    """Read the weights file ``path`` (once) and work out the options of its network.

    Args:
        path: a ``.pt``/``.pth`` (plain or wrapped state_dict) or ``.safetensors`` file.
        what: how messages introduce the file, e.g. ``'--pre_train'``.
        given: option values the caller sets (flags, overrides): they win over config.txt and the
            published values; a given ``rgb_range`` also builds a layout that keeps the mean shift out of
            its weights (else config.txt's, else 255).
        layout: read the file as this other code base's layout (``'super-image'``), for one its weights do
            not reveal; None: recognised by its keys.
        recognise: False to take the weights as they are, for a network built by hand (no options).
        for_flags: the options fill a command line's flags not given (``option.parse_main_args``): the
            description lists those filled from the weights, and names the flags kept.

    Raises:
        UserError: the file is missing or unreadable (:func:`files.read_state_dict`).
        UnknownCheckpoint: no architecture has its keys and shapes; the message names the file.
    """
    path, given = Path(path), dict(given or {})
    source = f'{what} {path}'
    notes: list[str] = []
    raw = files.strip_prefixes(files.read_state_dict(path, what=what), log=notes.append)
    rgb_range = given.get('rgb_range')

    def renamed(rgb_range: float | None) -> tuple[dict[str, torch.Tensor], Detected | None, Layout | None]:
        try:
            state, found = layouts.in_our_layout(raw, rgb_range=rgb_range, layout=layout)
            return state, identify(state, found, rgb_range=rgb_range) if recognise else None, found
        except UnknownCheckpoint as e:
            raise UnknownCheckpoint(f'{source}: {e}') from None

    state, detected, found = renamed(rgb_range)
    if detected is None:
        if found is not None:
            notes.append(layouts.renamed_note(source, found, rgb_range))
        return Checkpoint(path, what, state, None, notes=tuple(notes))

    config = run_config.beside(path)
    from_run, note = run_config.for_weights(config, detected) if config is not None else ({}, '')
    run_range = from_run.get('rgb_range')
    if found is not None and found.mean_outside and rgb_range is None and run_range is not None:
        rgb_range = run_range  # the layout keeps the mean shift out of its weights: built for the run's range
        state, detected, found = renamed(rgb_range)
    if found is not None:
        notes.append(layouts.renamed_note(source, found, rgb_range))

    options: dict[str, Any] = {'model': detected.model}
    sources = {'model': WEIGHTS}
    options.update(detected.options)
    sources.update(dict.fromkeys(detected.options, WEIGHTS))
    for key, value in detected.assumed.items():
        options[key] = from_run.get(key, value)
        sources[key] = CONFIG if key in from_run else ASSUMED
    for key in options.keys() & given.keys():
        options[key], sources[key] = given[key], FLAG
    description = _describe(source if for_flags else str(path), detected, options, sources, config, note,
                            _given_note(detected, given, for_flags), filled_only=for_flags)
    return Checkpoint(path, what, state, detected, options, sources, config, from_run.get('seed'), description,
                      tuple(notes))


def _listing(values: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v}' for k, v in values.items())


def _given_note(detected: Detected, given: Mapping[str, Any], for_flags: bool) -> str:
    """The end of the description: the options given (by name, for flags kept over what the weights record)."""
    if not for_flags:
        return 'as given: ' + _listing(given) if given else ''
    kept = sorted(({'model'} | set(detected.options)) & set(given))
    notes = ['as given (flags or --template): ' + ', '.join(kept)] if kept else []
    if detected.layout:
        notes.append(f'in the layout of {detected.layout}, renamed to ours')
    return '; '.join(notes)


def _describe(prefix: str, detected: Detected, options: Mapping[str, Any], sources: Mapping[str, str],
              config: Path | None, note: str, given: str, *, filled_only: bool) -> str:
    """One line: ``<prefix>: LCoAN x2 checkpoint; options read from the weights: ...; from <config>: ...;
    assumed (not stored in the weights): ...; <given>``.

    ``filled_only``: the options read from the weights are those filled in for flags not given (``model``
    among them); otherwise every option the weights record.
    """
    if filled_only:
        read = {k: v for k, v in options.items() if sources[k] == WEIGHTS}
    else:
        read = dict(detected.options)
    parts = [f'{prefix}: {detected.model} x{detected.scale} checkpoint',
             'options read from the weights: ' + _listing(read) if read else 'no options filled from the weights']
    from_config = {k: v for k, v in options.items() if sources[k] == CONFIG}
    if from_config:
        parts.append(f'from {config}: {_listing(from_config)}')
    if note:
        parts.append(note)
    assumed = {k: v for k, v in options.items() if sources[k] == ASSUMED}
    if assumed:
        parts.append('assumed (not stored in the weights): ' + _listing(assumed))
    if given:
        parts.append(given)
    return '; '.join(parts) + '.'
