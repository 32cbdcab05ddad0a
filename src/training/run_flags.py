"""Which combinations of the run flags make sense: ``--resume --load --pre_train --reset --untrained --test_only``,
and which network file ``--load <run>`` with ``--resume`` names.

Every other check of a run (the run name, the folder, what it holds) needs the file system and lives in
:mod:`training.run_folder`; these need only the flags, so option validation makes them before anything
is read or written.
"""

import argparse
from pathlib import Path

from core.errors import UserError


def run_weights(run_dir: Path, resume: int) -> Path:
    """The network file of run folder ``run_dir`` that ``--resume`` names: -1 (and 0) the latest epoch's,
    N epoch N's (kept with ``--save_models``)."""
    return run_dir / 'model' / ('model_latest.pt' if resume <= 0 else f'model_{resume}.pt')


def _loaded_run(args: argparse.Namespace) -> Path | None:
    name = args.load
    if not name or name in ('.', '..') or '/' in name or '\\' in name:
        return None  # no run, or no run name: the run folder reports it
    return Path(args.save_dir) / name


def evaluated_weights(args: argparse.Namespace) -> Path | None:
    """The network file ``--load <run> --test_only [--resume N]`` evaluates; None for other flags (or a
    ``--load`` that is no run name, which the run folder reports). ``option.parse_main_args``
    reads the architecture from it, as from ``--pre_train``."""
    run = _loaded_run(args)
    return run_weights(run, int(args.resume)) if run is not None and args.test_only else None


def resumed_run(args: argparse.Namespace) -> Path | None:
    """The run folder ``--load <run> --resume N`` (N != 0, training) continues; None for other flags.
    ``option.parse_main_args`` takes the options not given from its config.txt."""
    run = _loaded_run(args)
    return run if run is not None and not args.test_only and int(args.resume) != 0 else None


def check_run_flags(args: argparse.Namespace) -> None:
    """Raise UserError naming the flags of a combination that has no meaning; :func:`option.finalize` calls it.

    Args:
        args: options with ``--pre_train`` already normalised ('' for none); uses ``resume, load,
            pre_train, reset, untrained, test_only``.
    """
    _check_resume_flags(args)
    _check_weight_flags(args)


def _check_resume_flags(args: argparse.Namespace) -> None:
    if args.resume == 0:
        return
    if not args.load:
        raise UserError(f'--resume {args.resume}: needs --load <run> (the run to continue)')
    if args.pre_train:
        raise UserError(f'--pre_train {args.pre_train!r} and --resume {args.resume}: choose one (the resumed '
                        'run brings its own weights)')
    if args.reset:
        raise UserError(f'--reset and --resume {args.resume}: choose one (start over or continue)')


def _check_weight_flags(args: argparse.Namespace) -> None:
    # --test_only evaluates the weights the user names: --pre_train, --load, or --untrained on purpose.
    if args.untrained and (args.pre_train or args.load):
        given = '--pre_train' if args.pre_train else '--load'
        raise UserError(f'--untrained and {given}: choose one (random weights or the checkpoint)')
    if not args.test_only:
        if args.untrained:
            raise UserError('--untrained: only with --test_only (training starts from random weights unless '
                            '--pre_train is given)')
        return
    if args.pre_train and args.load:
        raise UserError(f'--pre_train {args.pre_train!r} and --load {args.load!r} with --test_only: choose one '
                        '(the weights to evaluate)')
    if args.reset and args.load:
        raise UserError(f'--reset and --load {args.load!r} with --test_only: --reset would delete the run whose '
                        'weights are evaluated; leave --reset out')
    if not (args.pre_train or args.load or args.untrained):
        raise UserError('--test_only: no weights to evaluate; give --pre_train <file.pt> or --load <run> (its '
                        'latest model), or --untrained to score a randomly initialised network on purpose')
