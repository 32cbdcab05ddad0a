"""Run flag combinations that make no sense (training.run_flags), checked from the flags alone."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from core.errors import UserError
from training.run_flags import check_run_flags, evaluated_weights


def flags(**given) -> SimpleNamespace:
    """The run flags as option.finalize leaves them (no --pre_train is ''), with ``given`` set."""
    return SimpleNamespace(**{'resume': 0, 'load': '', 'pre_train': '', 'reset': False, 'untrained': False,
                              'test_only': False, **given})


@pytest.mark.parametrize('given', [
    {},
    {'reset': True},
    {'pre_train': 'x.pt'},
    {'load': 'run', 'resume': -1},
    {'load': 'run', 'resume': 3},
    {'test_only': True, 'pre_train': 'x.pt'},
    {'test_only': True, 'load': 'run'},
    {'test_only': True, 'load': 'run', 'resume': 2},
    {'test_only': True, 'untrained': True},
    {'test_only': True, 'pre_train': 'x.pt', 'reset': True},  # a fresh folder for the evaluation
])
def test_combinations_that_make_sense_pass(given):
    check_run_flags(flags(**given))


@pytest.mark.parametrize('given, message', [
    ({'resume': -1}, r'^--resume -1: needs --load <run> \(the run to continue\)$'),
    ({'load': 'run', 'resume': -1, 'pre_train': 'x.pt'}, "^--pre_train 'x.pt' and --resume -1: choose one"),
    ({'load': 'run', 'resume': -1, 'reset': True}, r'^--reset and --resume -1: choose one \(start over or continue\)$'),
    ({'test_only': True}, r'^--test_only: no weights to evaluate; give --pre_train <file.pt> or --load <run> '
                          r'\(its latest model\), or --untrained to score a randomly initialised network on purpose$'),
    ({'test_only': True, 'pre_train': 'x.pt', 'load': 'run'},
     r"^--pre_train 'x.pt' and --load 'run' with --test_only: choose one \(the weights to evaluate\)$"),
    ({'untrained': True, 'pre_train': 'x.pt'}, '^--untrained and --pre_train: choose one'),
    ({'untrained': True, 'test_only': True, 'load': 'run'}, '^--untrained and --load: choose one'),
    ({'untrained': True}, r'^--untrained: only with --test_only \(training starts from random weights'),
    ({'test_only': True, 'load': 'run', 'reset': True},
     r"^--reset and --load 'run' with --test_only: --reset would delete the run whose weights are evaluated; "
     r'leave --reset out$'),
])
def test_combinations_without_meaning_name_their_flags(given, message):
    with pytest.raises(UserError, match=message):
        check_run_flags(flags(**given))


def test_the_network_file_load_test_only_evaluates():
    # What option.parse_main_args reads the architecture from, and what training.resume loads.
    assert evaluated_weights(flags(test_only=True, load='run', save_dir='exp')) == Path('exp/run/model/model_latest.pt')
    assert evaluated_weights(flags(test_only=True, load='run', resume=4, save_dir='exp')) == Path(
        'exp/run/model/model_4.pt')
    assert evaluated_weights(flags(test_only=True, load='run', resume=-1, save_dir='e')) == Path(
        'e/run/model/model_latest.pt')
    for given in ({'load': 'run', 'resume': -1}, {'test_only': True, 'pre_train': 'x.pt'},
                  {'test_only': True, 'load': '../elsewhere'}):
        assert evaluated_weights(flags(save_dir='exp', **given)) is None
